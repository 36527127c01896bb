"""What the uplink sends to the provincial risk-monitoring platform, and how it is wrapped on the wire.
The schema is documented in docs/uplink.md; this module is its one implementation, used by the sender
(``hazmon.regulator.uplink``) and the receiver (``hazmon.hub``).

A *message* is plain JSON::

    {"msg_id": "3f9a1c2b-000000000042", "seq": 42, "type": "base|realtime|alarm|heartbeat",
     "enterprise_code": "<USCC>", "created_at": "2026-11-30T10:00:00.000Z", "data": {...}}

An *envelope* is what one HTTPS POST carries::

    {"app_id": …, "msg_id": …, "type": …, "timestamp": <ms>, "nonce": <16 hex>,
     "data": base64(SM4-CBC(key, iv, PKCS#7(UTF-8 message JSON))),
     "sign": hex(HMAC-SM3(app_secret, app_id \\n msg_id \\n timestamp \\n nonce \\n data))}
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hazmon.alarms.alarm import Action, AlarmEvent
from hazmon.plant.site import Site
from hazmon.plant.tag import local_id
from hazmon.regulator.gb18218 import GradingError, grade
from hazmon.regulator.sm4 import SM4Error, decrypt_cbc, encrypt_cbc, hmac_sm3, same

SCHEMA_VERSION = "1.0"
MAX_SKEW_MS = 300_000  # a receiver refuses envelopes stamped further from its clock than this


class EnvelopeError(ValueError):
    """An envelope that cannot be accepted; ``status`` is the HTTP status a receiver answers."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Credentials:
    app_id: str
    app_secret: bytes
    key: bytes
    iv: bytes


def iso_us(t_us: int) -> str:
    return datetime.fromtimestamp(t_us / 1e6, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------- messages


def installation_grades(site: Site) -> dict[str, dict[str, Any]]:
    """GB 18218 figures per installation id; an installation that cannot be graded is sent ungraded."""
    out: dict[str, dict[str, Any]] = {}
    for inst in site.installations:
        try:
            g = grade(inst)
            out[inst.id] = {"major_hazard": g.is_major, "level": g.level, "r": round(g.r, 3), "s": round(g.s, 4)}
        except GradingError as e:
            out[inst.id] = {"major_hazard": None, "level": None, "r": None, "s": None, "grading_error": str(e)}
    return out


def base_data(site: Site, tag_ids: Iterable[str]) -> dict[str, Any]:
    """The ``data`` of a ``base`` message: enterprise, site, installations, equipment and the tags sent."""
    grades = installation_grades(site)
    equipment = site.equipment_by_id()
    sent = set(tag_ids)
    return {
        "enterprise": {"code": site.enterprise.uscc, "name": site.enterprise.name, "id": site.enterprise.id},
        "site": {
            "code": site.site.id,
            "name": site.site.name,
            "address": site.site.address,
            "timezone": site.site.timezone,
            "latitude": site.site.latitude,
            "longitude": site.site.longitude,
        },
        "installations": [
            {
                "code": i.id,
                "name": i.name,
                "kind": i.kind.value,
                "people_within_500m": i.people_within_500m,
                **grades[i.id],
                "chemicals": [
                    {
                        "name": c.name,
                        "cas": c.cas,
                        "quantity_t": c.quantity_t,
                        "critical_quantity_t": c.critical_quantity_t,
                        "category": c.category,
                    }
                    for c in i.chemicals
                ],
            }
            for i in site.installations
        ],
        "equipment": [
            {
                "code": e.id,
                "name": e.name,
                "type": e.type.value,
                "installation_code": e.installation,
                "chemical": e.chemical,
                "capacity_m3": e.capacity_m3,
                "design": e.design.model_dump(exclude_none=True),
            }
            for e in site.equipment
        ],
        "tags": [
            {
                "code": t.id,
                "name": t.name,
                "kind": t.kind.value,
                "unit": t.unit,
                "range": list(t.range) if t.range is not None else None,
                "equipment_code": t.equipment,
                "installation_code": equipment[t.equipment].installation if t.equipment in equipment else None,
                "period_s": t.period_s,
                "gas": None if t.gas is None else {"class": t.gas.gas_class.value, "substance": t.gas.substance},
                "signal": None if t.signal is None else t.signal.value,
            }
            for t in site.tags
            if t.id in sent
        ],
    }


def realtime_data(
    site_id: str, collected_us: int, values: list[dict[str, Any]], place: Mapping[str, str]
) -> dict[str, Any]:
    """The ``data`` of a ``realtime`` message. ``values`` as the live hub gives them: tag, ts_us, value, quality."""
    return {
        "site_code": site_id,
        "collected_at": iso_us(collected_us),
        "values": [
            {
                "tag_code": v["tag"],
                "installation_code": place.get(v["tag"]),
                "value": v["value"],
                "quality": "good" if v["quality"] == 0 else "uncertain" if v["quality"] < 128 else "bad",
                "quality_code": v["quality"],
                "ts": iso_us(v["ts_us"]),
            }
            for v in values
        ],
    }


# The alarm is on (raise) or off again: its condition cleared, or an operator reset a latched alarm.
RAISE_CLEAR = {Action.ACTIVATE: "raise", Action.CLEAR: "clear", Action.RESET: "clear"}


def alarm_event(e: AlarmEvent, installation: str | None, equipment: str | None) -> dict[str, Any]:
    """The message names the site (``site_code``): the alarm and its tag are named within it."""
    return {
        "alarm_id": local_id(e.alarm_id),
        "tag_code": local_id(e.tag_id) if e.tag_id is not None else None,
        "installation_code": installation,
        "equipment_code": equipment,
        "condition": e.condition,
        "priority": e.priority.value,
        "kind": RAISE_CLEAR.get(Action(e.action), e.action),
        "action": str(e.action),  # activate, clear, or reset (a latched alarm reset by an operator)
        "user": e.user,
        "value": e.value,
        "limit": e.limit,
        "ts": iso_us(e.ts_us),
    }


def message(msg_id: str, seq: int, kind: str, enterprise_code: str, created_us: int, data: Any) -> dict[str, Any]:
    return {
        "msg_id": msg_id,
        "seq": seq,
        "type": kind,
        "schema": SCHEMA_VERSION,
        "enterprise_code": enterprise_code,
        "created_at": iso_us(created_us),
        "data": data,
    }


# ---------------------------------------------------------------------- envelopes


def _signed_text(app_id: str, msg_id: str, timestamp: int, nonce: str, data: str) -> bytes:
    return f"{app_id}\n{msg_id}\n{timestamp}\n{nonce}\n{data}".encode()


def seal(creds: Credentials, msg: dict[str, Any], *, now_ms: int | None = None) -> dict[str, Any]:
    """Encrypt and sign one message for a POST."""
    plain = json.dumps(msg, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    data = base64.b64encode(encrypt_cbc(creds.key, creds.iv, plain)).decode("ascii")
    ts = int(time.time() * 1000) if now_ms is None else now_ms
    nonce = secrets.token_hex(8)
    msg_id = str(msg["msg_id"])
    sign = hmac_sm3(creds.app_secret, _signed_text(creds.app_id, msg_id, ts, nonce, data))
    return {
        "app_id": creds.app_id,
        "msg_id": msg_id,
        "type": msg["type"],
        "timestamp": ts,
        "nonce": nonce,
        "data": data,
        "sign": sign,
    }


def open_envelope(
    envelope: Any, credentials: Mapping[str, Credentials], *, now_ms: int | None = None
) -> dict[str, Any]:
    """Check and decrypt an envelope: the message, or an EnvelopeError (400 malformed, 401 not authentic)."""
    if not isinstance(envelope, dict):
        raise EnvelopeError(400, "the body must be a JSON object")
    fields = {"app_id": str, "msg_id": str, "type": str, "timestamp": int, "nonce": str, "data": str, "sign": str}
    for name, kind in fields.items():
        if not isinstance(envelope.get(name), kind) or isinstance(envelope.get(name), bool):
            raise EnvelopeError(400, f"{name}: missing or not a {kind.__name__}")
    creds = credentials.get(envelope["app_id"])
    if creds is None:
        raise EnvelopeError(401, f"unknown app_id {envelope['app_id']!r}")
    expected = hmac_sm3(
        creds.app_secret,
        _signed_text(creds.app_id, envelope["msg_id"], envelope["timestamp"], envelope["nonce"], envelope["data"]),
    )
    if not same(expected, envelope["sign"].lower()):
        raise EnvelopeError(401, "bad signature")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if abs(now - envelope["timestamp"]) > MAX_SKEW_MS:
        raise EnvelopeError(401, f"timestamp {envelope['timestamp']} is more than {MAX_SKEW_MS // 1000} s off")
    try:
        plain = decrypt_cbc(creds.key, creds.iv, base64.b64decode(envelope["data"], validate=True))
        msg = json.loads(plain.decode("utf-8"))
    except (binascii.Error, SM4Error, UnicodeDecodeError, ValueError) as e:
        raise EnvelopeError(400, f"data does not decrypt to JSON: {e}") from None
    if not isinstance(msg, dict) or msg.get("msg_id") != envelope["msg_id"] or msg.get("type") != envelope["type"]:
        raise EnvelopeError(400, "the decrypted message does not match the envelope's msg_id and type")
    return msg
