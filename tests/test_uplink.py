"""The uplink's parts: SM4 against the standard's test vector, HMAC-SM3, the envelope a receiver
checks, the disk queue (ordered, persistent, bounded), the settings, and the link's behaviour against
a real receiver (an HTTP server on loopback) that refuses a message or the credentials."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from api_helpers import SITE_FILE, free_port
from hazmon.config import ConfigError, UplinkSettings, load_settings
from hazmon.hub.receiver import UPLINK_PATH, create_receiver
from hazmon.hub.sink import JsonlSink
from hazmon.plant.site import load_site
from hazmon.plant.tag import TagIndex, split_ref, tag_ref
from hazmon.regulator import sm4
from hazmon.regulator.uplink import Uplink, credentials
from hazmon.regulator.uplink_payload import Credentials, EnvelopeError, open_envelope, seal
from hazmon.regulator.uplink_queue import UplinkQueue

KEY = "0123456789abcdeffedcba9876543210"
IV = "00112233445566778899aabbccddeeff"
SECRET = "issued-by-the-authority"
APP = "hz-320500-0001"


def _uplink_settings(port: int, **over: Any) -> UplinkSettings:
    d: dict[str, Any] = {
        "endpoint": f"http://127.0.0.1:{port}{UPLINK_PATH}",
        "app_id": APP,
        "app_secret": SECRET,
        "sm4_key": KEY,
        "sm4_iv": IV,
        "interval_s": 0.5,
        "heartbeat_s": 1.0,
        "backlog_alarm_s": 2.0,
    }
    d.update(over)
    return UplinkSettings(**d)


async def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------------- crypto


def test_sm4_standard_test_vector_and_cbc() -> None:
    key = bytes.fromhex("0123456789abcdeffedcba9876543210")
    # GB/T 32907-2016, appendix A, example 1
    assert sm4.encrypt_block(key, key).hex() == "681edf34d206965e86b3e94f536e4246"
    iv = bytes.fromhex(IV)
    for n in (0, 1, 15, 16, 17, 1000):
        data = (bytes(range(256)) * 4)[:n]
        c = sm4.encrypt_cbc(key, iv, data)
        assert len(c) == (n // 16 + 1) * 16  # PKCS#7 always pads
        assert sm4.decrypt_cbc(key, iv, c) == data
    with pytest.raises(sm4.SM4Error, match="padding"):
        sm4.decrypt_cbc(bytes(16), iv, sm4.encrypt_cbc(key, iv, b"hello, platform"))
    with pytest.raises(sm4.SM4Error, match="blocks"):
        sm4.decrypt_cbc(key, iv, b"short")
    with pytest.raises(sm4.SM4Error, match="32 hexadecimal"):
        sm4.parse_hex_key("0123", "uplink.sm4_key")


def test_sm4_cbc_agrees_with_an_independent_implementation() -> None:
    """hazmon's SM4-CBC/PKCS#7 (OpenSSL through cryptography) against gmssl's pure-Python SM4, both ways,
    on lengths around the block size (padding of 1 to 16 bytes)."""
    from gmssl import sm4 as gm  # type: ignore[import-untyped]

    key, iv = bytes.fromhex(KEY), bytes.fromhex(IV)
    for n in (0, 1, 15, 16, 17, 31, 32, 100):
        data = ("液氨储罐 T201 液位 62.5%".encode() * 8)[:n]
        c = gm.CryptSM4()
        c.set_key(key, gm.SM4_ENCRYPT)
        theirs = c.crypt_cbc(iv, data)
        assert sm4.encrypt_cbc(key, iv, data) == theirs, n
        assert sm4.decrypt_cbc(key, iv, theirs) == data, n


def test_sm3_and_hmac_sm3() -> None:
    # GB/T 32905-2016, appendix A, example 1
    assert sm4.sm3_hex(b"abc") == "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    # the gmssl fallback gives the same HMAC as OpenSSL's SM3
    assert hmac.new(b"k", b"message", sm4._GmSM3).hexdigest() == sm4.hmac_sm3(b"k", b"message")  # type: ignore[arg-type]


def test_envelope_is_checked_before_it_is_believed() -> None:
    creds = Credentials(APP, SECRET.encode(), bytes.fromhex(KEY), bytes.fromhex(IV))
    known = {APP: creds}
    msg = {"msg_id": "abc-000000000001", "seq": 1, "type": "alarm", "data": {"v": "氨 NH3"}}
    env = seal(creds, msg)
    assert open_envelope(env, known) == msg
    assert "氨" not in json.dumps(env, ensure_ascii=False)  # the payload travels encrypted

    def refused(e: Any, status: int, text: str) -> None:
        with pytest.raises(EnvelopeError, match=text) as info:
            open_envelope(e, known)
        assert info.value.status == status

    refused({**env, "data": env["data"][:-4] + "AAA="}, 401, "bad signature")
    refused({**env, "app_id": "someone-else"}, 401, "unknown app_id")
    refused(seal(Credentials(APP, b"wrong", creds.key, creds.iv), msg), 401, "bad signature")
    refused(seal(creds, msg, now_ms=int(time.time() * 1000) - 3_600_000), 401, "s off")
    refused(seal(Credentials(APP, creds.app_secret, bytes(16), creds.iv), msg), 400, "does not decrypt")
    refused({k: v for k, v in env.items() if k != "nonce"}, 400, "nonce")
    refused([1, 2], 400, "JSON object")


# ---------------------------------------------------------------------- the disk queue


def test_queue_is_ordered_persistent_and_bounded(tmp_path: Path) -> None:
    q = UplinkQueue(tmp_path / "q", max_bytes=1 << 20)
    seqs = q.put([("realtime", {"i": i}, 1_000 + i) for i in range(5)])
    assert seqs == [1, 2, 3, 4, 5] and q.backlog == 5
    head = q.peek()
    assert head is not None and head.seq == 1 and head.msg == {"i": 0}
    q.ack(1)
    q.ack(2)
    stream = q.stream
    # a crash in the middle of an append leaves a torn line: cut off at the next start
    seg = sorted((tmp_path / "q").glob("*.jsonl"))[-1]
    with seg.open("ab") as f:
        f.write(b'{"seq": 6, "t": 1, "ki')
    q2 = UplinkQueue(tmp_path / "q", max_bytes=1 << 20)
    assert q2.stream == stream and q2.backlog == 3
    assert [q2.peek().seq for _ in range(1)] == [3]  # type: ignore[union-attr]
    assert q2.put([("alarm", {"i": 99}, 2_000)]) == [6]
    got = []
    while (rec := q2.peek()) is not None:
        got.append(rec.seq)
        q2.ack(rec.seq)
    assert got == [3, 4, 5, 6] and q2.backlog == 0
    assert q2.message_id(6) == f"{stream}-000000000006"

    # bounded: the oldest segment goes, counted as dropped
    small = UplinkQueue(tmp_path / "small", max_bytes=64 * 1024)
    for i in range(400):
        small.put([("realtime", {"pad": "x" * 400, "i": i}, i)])
    assert small.bytes <= 64 * 1024 + small.segment_bytes
    assert small.dropped["queue full"] > 0
    assert small.backlog + small.dropped["queue full"] == 400
    first = small.peek()
    assert first is not None and first.seq == small.dropped["queue full"] + 1


def test_uplink_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="set app_id, app_secret, sm4_key, sm4_iv too"):
        load_settings(uplink={"endpoint": "https://platform.example/api/v1/uplink"})
    with pytest.raises(ConfigError, match="use https://"):
        load_settings(uplink={"endpoint": "http://platform.example/x", "app_id": "a", "app_secret": "s"})
    with pytest.raises(ConfigError, match="sm4_key: must be 32 hexadecimal"):
        load_settings(uplink={**_uplink_settings(1).model_dump(), "app_secret": "s", "sm4_key": "xyz", "sm4_iv": IV})
    s = load_settings()
    assert s.uplink.endpoint is None and s.uplink.interval_s == 10.0
    assert SECRET not in repr(_uplink_settings(1))  # secrets are not printed


# ---------------------------------------------------------------------- against a real receiver


@asynccontextmanager
async def receiver(
    port: int, out: Path, creds: Credentials, tls: tuple[Path, Path] | None = None
) -> AsyncIterator[JsonlSink]:
    sink = JsonlSink(out)
    app = create_receiver({creds.app_id: creds}, sink)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error")
    if tls is not None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="error", ssl_certfile=str(tls[0]), ssl_keyfile=str(tls[1])
        )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.started, 10, "the receiver to start")
        yield sink
    finally:
        server.should_exit = True
        await task
        sink.close()


def _latest_values(tags: TagIndex, value: float, quality: int) -> Callable[[Any], list[dict[str, Any]]]:
    """The runtime's latest values (``LiveHub.latest_values``): each tag by its site and its id there."""

    def latest(keys: Any) -> list[dict[str, Any]]:
        out = []
        for k in keys:
            site, tag = split_ref(tags.id(int(k)))
            out.append({"site": site, "tag": tag, "ts_us": 1_764_000_000_000_000, "value": value, "quality": quality})
        return out

    return latest


def _standalone_uplink(settings: UplinkSettings, data_dir: Path) -> Uplink:
    site = load_site(SITE_FILE)
    tags = TagIndex.from_sites([site])
    site_of = {tag_ref(site.id, t.id): site.id for t in site.tags}
    latest = _latest_values(tags, 1.5, 0)
    return Uplink(settings, data_dir, sites=lambda: [site], tags=lambda: tags, latest=latest, site_of=site_of.get)


async def test_a_refused_message_is_set_aside_and_the_link_goes_on(tmp_path: Path) -> None:
    """The platform decrypts with another key: every message is refused (400) — counted, kept aside
    in rejected.jsonl, and the queue does not jam."""
    port = free_port()
    wrong_key = Credentials(APP, SECRET.encode(), bytes(16), bytes.fromhex(IV))
    uplink = _standalone_uplink(_uplink_settings(port), tmp_path)
    async with receiver(port, tmp_path / "hub.jsonl", wrong_key) as sink:
        task = asyncio.create_task(uplink.run())
        try:
            await wait_for(lambda: sum(uplink.stats.rejected.values()) >= 3, 20, "three refusals")
            assert uplink.queue.backlog <= 2  # it moves on
            assert sink.stats()["received"] == 0
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    reasons = [json.loads(line)["reason"] for line in (tmp_path / "uplink" / "rejected.jsonl").open()]
    assert reasons and all("HTTP 400" in r and "does not decrypt" in r for r in reasons)


async def test_wrong_credentials_keep_the_backlog_until_fixed(tmp_path: Path) -> None:
    """Credentials the platform does not accept (401) are a configuration problem, not bad data: the
    messages wait on disk, the backlog ages past the alarm threshold, and nothing is lost."""
    port = free_port()
    issued = credentials(_uplink_settings(port))
    uplink = _standalone_uplink(_uplink_settings(port, app_secret="an-old-secret"), tmp_path)
    task = asyncio.create_task(uplink.run())
    try:
        async with receiver(port, tmp_path / "hub.jsonl", issued) as sink:
            await wait_for(lambda: uplink.backlog_overdue(), 20, "the backlog to age past 2 s")
            assert sink.stats()["received"] == 0 and sum(uplink.stats.rejected.values()) == 0
            assert any("HTTP 401" in r for r in uplink.stats.post_failures)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    backlog = uplink.queue.backlog
    # the secret is corrected and hazmon restarted: everything queued is delivered, once
    fixed = _standalone_uplink(_uplink_settings(port), tmp_path)
    assert fixed.queue.backlog >= backlog
    async with receiver(port, tmp_path / "hub.jsonl", issued) as sink:
        task = asyncio.create_task(fixed.run())
        try:
            await wait_for(lambda: fixed.queue.backlog == 0, 30, "the backlog to drain")
            assert sink.stats()["received"] == fixed.queue.last_seq
            assert sink.stats()["out_of_order"] == 0
            assert not fixed.backlog_overdue()
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def test_a_receiver_restart_keeps_its_counts_and_drops_duplicates(tmp_path: Path) -> None:
    creds = Credentials(APP, SECRET.encode(), bytes.fromhex(KEY), bytes.fromhex(IV))
    msg = {"msg_id": "s1-000000000001", "seq": 1, "type": "realtime", "enterprise_code": "X", "data": {}}
    port = free_port()
    url = f"http://127.0.0.1:{port}{UPLINK_PATH}"
    async with receiver(port, tmp_path / "hub.jsonl", creds), httpx.AsyncClient() as client:
        r = await client.post(url, json=seal(creds, msg))
        assert r.json() == {"code": 0, "msg": "ok", "msg_id": "s1-000000000001", "duplicate": False}
        bad = await client.post(url, content=b"not json")
        assert bad.status_code == 400 and bad.json()["code"] == 400
    async with receiver(port, tmp_path / "hub.jsonl", creds) as sink, httpx.AsyncClient() as client:
        r = await client.post(url, json=seal(creds, msg))  # sent again after a crash before the ack
        assert r.json()["duplicate"] is True
        assert sink.stats()["received"] == 1 and sink.stats()["duplicates"] == 1
        stats = (await client.get(f"http://127.0.0.1:{port}/stats")).json()
        assert stats["received"] == 1


async def test_base_data_again_when_the_site_changes_and_only_the_named_tags(tmp_path: Path) -> None:
    port = free_port()
    site = load_site(SITE_FILE)
    tags = TagIndex.from_sites([site])
    current = [site]
    settings = _uplink_settings(port, tags=["V101.GT1", "T201.LT", "NO.SUCH.TAG"], interval_s=0.2)

    latest = _latest_values(tags, 2.0, 130)
    site_of = {tag_ref(site.id, t.id): site.id for t in site.tags}
    uplink = Uplink(settings, tmp_path, sites=lambda: current, tags=lambda: tags, latest=latest, site_of=site_of.get)
    creds = credentials(settings)
    async with receiver(port, tmp_path / "hub.jsonl", creds) as sink:
        task = asyncio.create_task(uplink.run())
        try:
            await wait_for(lambda: sink.stats()["by_type"].get("realtime", 0) >= 1, 10, "realtime data")
            assert sink.stats()["by_type"]["base"] == 1
            # the site is reloaded with a change: base data again, once
            current[:] = [site.model_copy(update={"site": site.site.model_copy(update={"name": "renamed"})})]
            await wait_for(lambda: sink.stats()["by_type"]["base"] == 2, 10, "base data of the changed site")
            await wait_for(lambda: sink.stats()["by_type"].get("heartbeat", 0) >= 1, 10, "a heartbeat")
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    messages = [json.loads(line) for line in (tmp_path / "hub.jsonl").open(encoding="utf-8")]
    bases = [m["data"] for m in messages if m["type"] == "base"]
    assert [b["site"]["name"] for b in bases] == [site.site.name, "renamed"]
    assert {t["code"] for t in bases[0]["tags"]} == {"V101.GT1", "T201.LT"}
    values = [v for m in messages if m["type"] == "realtime" for v in m["data"]["values"]]
    assert {v["tag_code"] for v in values} == {"V101.GT1", "T201.LT"}
    assert values[0]["quality"] == "bad" and values[0]["quality_code"] == 130
    assert all(m["enterprise_code"] == site.enterprise.uscc for m in messages)


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, signed by itself (the platform's CA, as the authority would hand it out)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "platform.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "platform.pem", tmp_path / "platform.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


async def test_over_https_the_platform_certificate_is_verified(tmp_path: Path) -> None:
    port = free_port()
    cert, key = _self_signed(tmp_path)
    https = {"endpoint": f"https://127.0.0.1:{port}{UPLINK_PATH}"}
    trusting = _standalone_uplink(_uplink_settings(port, **https, ca_file=cert), tmp_path / "trusting")
    doubting = _standalone_uplink(_uplink_settings(port, **https), tmp_path / "doubting")  # system CAs only
    async with receiver(port, tmp_path / "hub.jsonl", credentials(_uplink_settings(port)), tls=(cert, key)) as sink:
        tasks = [asyncio.create_task(u.run()) for u in (trusting, doubting)]
        try:
            await wait_for(lambda: sink.stats()["by_type"].get("realtime", 0) >= 2, 15, "data over HTTPS")
            await wait_for(lambda: bool(doubting.stats.post_failures), 10, "the unverified certificate refused")
            assert doubting.stats.sent == 0 and doubting.queue.backlog > 0  # kept, not lost
            assert "CERTIFICATE_VERIFY_FAILED" in (doubting.stats.last_error or "")
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with pytest.raises(asyncio.CancelledError):
                    await t
    with pytest.raises(ConfigError, match="ca_file: file not found"):
        load_settings(uplink={**_uplink_settings(port).model_dump(mode="json"), "app_secret": SECRET,
                              "sm4_key": KEY, "sm4_iv": IV, "ca_file": str(tmp_path / "nowhere.pem")})  # fmt: skip
