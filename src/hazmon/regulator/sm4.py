"""SM4-CBC with PKCS#7 padding (GB/T 32907-2016, the block cipher of China's commercial
cryptography), and HMAC-SM3 (GB/T 32905-2016) for signing: the crypto of the provincial-platform
uplink, shared by the sender (``hazmon.regulator.uplink``) and the receiver (``hazmon.hub``).

The block cipher is OpenSSL's SM4 through ``cryptography`` (about 0.1 ms for a 100-value message,
where ``gmssl``'s pure-Python SM4 took 46 ms). Decryption checks the padding itself, so a wrong key or
IV is an ``SM4Error``, not garbage.
SM3 comes from OpenSSL through ``hashlib`` where it is built in, from ``gmssl`` otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from gmssl import sm3  # type: ignore[import-untyped]

BLOCK = 16


class SM4Error(ValueError):
    """A key or IV of the wrong size, or a ciphertext that does not decrypt (wrong key, IV or data)."""


def parse_hex_key(text: str, what: str) -> bytes:
    """A 128-bit key or IV given as 32 hex digits."""
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raise SM4Error(f"{what}: must be 32 hexadecimal digits (128 bits)") from None
    if len(raw) != BLOCK:
        raise SM4Error(f"{what}: must be 32 hexadecimal digits (128 bits), not {len(raw) * 2}")
    return raw


def _check(key: bytes, iv: bytes | None = None) -> None:
    if len(key) != BLOCK:
        raise SM4Error(f"SM4 key must be 16 bytes, not {len(key)}")
    if iv is not None and len(iv) != BLOCK:
        raise SM4Error(f"SM4 IV must be 16 bytes, not {len(iv)}")


def _ecb(key: bytes) -> Cipher[modes.ECB]:
    return Cipher(algorithms.SM4(key), modes.ECB())


def _cbc(key: bytes, iv: bytes) -> Cipher[modes.CBC]:
    return Cipher(algorithms.SM4(key), modes.CBC(iv))


def encrypt_block(key: bytes, block: bytes) -> bytes:
    """One block, no padding (for the standard's test vector)."""
    _check(key)
    if len(block) != BLOCK:
        raise SM4Error(f"one SM4 block is 16 bytes, not {len(block)}")
    e = _ecb(key).encryptor()
    return e.update(block) + e.finalize()


def encrypt_cbc(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    _check(key, iv)
    pad = BLOCK - len(plaintext) % BLOCK  # PKCS#7: 1..16 bytes, each the count
    e = _cbc(key, iv).encryptor()
    return e.update(plaintext + bytes([pad]) * pad) + e.finalize()


def decrypt_cbc(key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    _check(key, iv)
    if not ciphertext or len(ciphertext) % BLOCK:
        raise SM4Error(f"ciphertext of {len(ciphertext)} bytes is not a whole number of 16-byte blocks")
    d = _cbc(key, iv).decryptor()
    plain = d.update(ciphertext) + d.finalize()
    pad = plain[-1]
    if not 1 <= pad <= BLOCK or plain[-pad:] != bytes([pad]) * pad:
        raise SM4Error("bad padding after decryption: wrong key or IV, or damaged data")
    return plain[:-pad]


def _sm3_digest(data: bytes) -> bytes:
    return bytes.fromhex(sm3.sm3_hash(list(data)))


class _GmSM3:
    """A hashlib-like SM3 object over gmssl, for ``hmac`` where OpenSSL lacks SM3."""

    digest_size = 32
    block_size = 64
    name = "sm3"

    def __init__(self, data: bytes = b"") -> None:
        self._data = bytearray(data)

    def update(self, data: bytes) -> None:
        self._data += data

    def digest(self) -> bytes:
        return _sm3_digest(bytes(self._data))

    def hexdigest(self) -> str:
        return self.digest().hex()

    def copy(self) -> _GmSM3:
        return _GmSM3(bytes(self._data))


def _sm3_factory() -> Callable[..., object]:
    try:
        hashlib.new("sm3")
    except ValueError:
        return _GmSM3
    return lambda data=b"": hashlib.new("sm3", data)


SM3 = _sm3_factory()


def sm3_hex(data: bytes) -> str:
    h = SM3(data)
    return h.hexdigest()  # type: ignore[attr-defined,no-any-return]


def hmac_sm3(secret: bytes, message: bytes) -> str:
    """HMAC-SM3 of ``message`` as lower-case hex."""
    return hmac.new(secret, message, SM3).hexdigest()  # type: ignore[arg-type]


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
