"""An enterprise's ``base`` message (docs/uplink.md) as hazmon's site model, so that the hub registers the
enterprise's site like a site file: its installations, equipment and the monitoring points it sends.

``site_from_base`` raises ``InvalidFile`` (every problem with its path in the message) when the data do not
make a valid site; the hub refuses such a message for its content.
"""

from __future__ import annotations

from typing import Any

from hazmon.errors import InvalidFile, Problem
from hazmon.plant.site import Site, parse_site


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def site_from_base(data: Any, enterprise_code: str, source: str = "<base message>") -> Site:
    if not isinstance(data, dict):
        raise InvalidFile(source, [Problem("data", "must be an object")])
    try:
        ent, info = data["enterprise"], data["site"]
        if ent.get("code") != enterprise_code:
            raise InvalidFile(
                source,
                [Problem("data.enterprise.code", f"{ent.get('code')!r} is not the message's {enterprise_code!r}")],
            )
        doc = {
            "enterprise": {"id": ent.get("id") or ent["code"], "name": ent["name"], "uscc": ent["code"]},
            "site": _drop_none(
                {
                    "id": info["code"],
                    "name": info["name"],
                    "address": info.get("address"),
                    "timezone": info.get("timezone"),
                    "latitude": info.get("latitude"),
                    "longitude": info.get("longitude"),
                }
            ),
            "installations": [
                {
                    "id": i["code"],
                    "name": i["name"],
                    "kind": i["kind"],
                    "people_within_500m": i.get("people_within_500m", 0),
                    "chemicals": [
                        _drop_none(
                            {
                                "name": c["name"],
                                "cas": c.get("cas"),
                                "quantity_t": c["quantity_t"],
                                "critical_quantity_t": c.get("critical_quantity_t"),
                                "category": c.get("category"),
                            }
                        )
                        for c in i["chemicals"]
                    ],
                }
                for i in data["installations"]
            ],
            "equipment": [
                _drop_none(
                    {
                        "id": e["code"],
                        "name": e["name"],
                        "type": e["type"],
                        "installation": e["installation_code"],
                        "chemical": e.get("chemical"),
                        "capacity_m3": e.get("capacity_m3"),
                        "design": e.get("design") or None,
                    }
                )
                for e in data["equipment"]
            ],
            "tags": [
                _drop_none(
                    {
                        "id": t["code"],
                        "name": t["name"],
                        "kind": t["kind"],
                        "unit": t.get("unit"),
                        "range": t.get("range"),
                        "equipment": t["equipment_code"],
                        "period_s": t.get("period_s"),
                        "gas": t.get("gas"),
                        "signal": t.get("signal"),
                    }
                )
                for t in data["tags"]
            ],
        }
    except (KeyError, TypeError, AttributeError) as e:
        raise InvalidFile(source, [Problem("data", f"missing or malformed field: {e}")]) from None
    return parse_site(doc, source)
