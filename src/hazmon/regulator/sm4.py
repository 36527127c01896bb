"""SM4-CBC with PKCS#7 padding (GB/T 32907-2016, the block cipher of China's commercial
cryptography), and HMAC-SM3 (GB/T 32905-2016) for signing: the crypto of the provincial-platform
uplink, shared by the sender (``hazmon.regulator.uplink``) and the receiver (``hazmon.hub``).

The block cipher is ``gmssl``'s pure-Python SM4. Decryption checks the padding itself (``gmssl``
strips whatever the last byte says), so a wrong key or IV is an ``SM4Error``, not garbage.
SM3 comes from OpenSSL through ``hashlib`` where it is built in, from ``gmssl`` otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from gmssl import sm3, sm4  # type: ignore[import-untyped]

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


def encrypt_block(key: bytes, block: bytes) -> bytes:
    """One block, no padding (for the standard's test vector)."""
    _check(key)
    c = sm4.CryptSM4(padding_mode=None)
    c.set_key(key, sm4.SM4_ENCRYPT)
    out: bytes = c.crypt_ecb(block)
    return out


def encrypt_cbc(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    _check(key, iv)
    c = sm4.CryptSM4()
    c.set_key(key, sm4.SM4_ENCRYPT)
    out: bytes = c.crypt_cbc(iv, plaintext)  # pads with PKCS#7
    return out


def decrypt_cbc(key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    _check(key, iv)
    if not ciphertext or len(ciphertext) % BLOCK:
        raise SM4Error(f"ciphertext of {len(ciphertext)} bytes is not a whole number of 16-byte blocks")
    c = sm4.CryptSM4(padding_mode=None)
    c.set_key(key, sm4.SM4_DECRYPT)
    raw: bytes = c.crypt_ecb(ciphertext)  # each block decrypted; CBC chaining below
    chain = iv + ciphertext[:-BLOCK]
    plain = (int.from_bytes(raw, "big") ^ int.from_bytes(chain, "big")).to_bytes(len(raw), "big")
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
