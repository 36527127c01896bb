"""System alarms (``hazmon.<component>``, a gateway) belong to no one site: they reach the operators of
every site they affect, and nobody else, in the place lookups the API uses and in the live hub
(snapshot and stream). A runtime serving two sites: the storage alarm affects both, a gateway's
alarm the sites of its tags."""

from __future__ import annotations

import json

from hazmon.alarms.alarm import Action, AlarmEvent, AlarmSnapshot, AlarmState, Priority
from hazmon.auth import Principal, Role
from hazmon.live import Follow, LiveHub
from hazmon.plant.directory import build_directory
from hazmon.plant.tag import TagIndex

# tags and devices are named across sites (site/id); a system owner (hazmon.*) belongs to no one site
TAGS = TagIndex(["site-a/A.LT", "site-b/B.LT"])
SITE_OF = {
    "site-a/A.LT": "site-a",
    "site-b/B.LT": "site-b",
    "site-b/gw-b.plc": "site-b",
    "hazmon.gateway.gw-b": "site-b",
}
SYSTEM = {"hazmon.storage": ["site-a", "site-b"], "hazmon.gateway.gw-b": ["site-b"]}
T0 = 1_790_000_000_000_000


def principal(role: Role, *sites: str) -> Principal:
    return Principal("t1", "x", role, frozenset(sites), scope=frozenset(sites))


def event(owner: str, new: AlarmState) -> AlarmEvent:
    return AlarmEvent(
        f"{owner}:comm.LOSS",
        None,
        "comm.LOSS",
        Priority.HIGH,
        AlarmState.NORMAL,
        new,
        None,
        None,
        T0,
        action=Action.ACTIVATE,
    )


def test_a_system_alarm_is_seen_by_the_operators_of_every_site_it_affects() -> None:
    where = build_directory([], SITE_OF, TAGS, SYSTEM)
    storage = where.place_of("hazmon.storage")
    assert storage.site is None and storage.sites == {"site-a", "site-b"}
    alice, bob, carol = (principal(Role.OPERATOR, s) for s in ("site-a", "site-b", "site-c"))
    assert storage.seen_by(alice.sees) and storage.seen_by(bob.sees) and not storage.seen_by(carol.sees)
    assert storage.seen_by(principal(Role.ADMIN).sees)
    gateway = where.place_of("hazmon.gateway.gw-b")
    assert gateway.site == "site-b" and gateway.seen_by(bob.sees) and not gateway.seen_by(alice.sees)
    # tags stay their own site's
    tag = where.place_of("site-a/A.LT")
    assert tag.site == "site-a" and tag.seen_by(alice.sees) and not tag.seen_by(bob.sees)


def test_the_hub_sends_a_system_alarm_to_each_affected_site_in_snapshot_and_stream() -> None:
    where = build_directory([], SITE_OF, TAGS, SYSTEM)
    hub = LiveHub()
    standing = AlarmSnapshot(
        "hazmon.storage:comm.LOSS",
        None,
        "comm.LOSS",
        Priority.HIGH,
        AlarmState.ACTIVE_UNACK,
        True,
        False,
        None,
        None,
        T0,
    )
    a, alarms_a = hub.subscribe(Follow(sites=frozenset({"site-a"})), [standing], where.place_of, tags=TAGS)
    b, alarms_b = hub.subscribe(Follow(sites=frozenset({"site-b"})), [standing], where.place_of, tags=TAGS)
    c, alarms_c = hub.subscribe(Follow(sites=frozenset({"site-c"})), [standing], where.place_of, tags=TAGS)
    assert [x["alarm_id"] for x in alarms_a] == [x["alarm_id"] for x in alarms_b] == ["hazmon.storage:comm.LOSS"]
    assert alarms_a[0]["sites"] == ["site-a", "site-b"] and alarms_a[0]["site"] is None
    assert alarms_c == []

    hub.publish_events(
        [event("hazmon.gateway.gw-b", AlarmState.ACTIVE_UNACK), event("hazmon.storage", AlarmState.RTN_UNACK)],
        where.place_of,
    )

    def got(sub: object) -> list[str]:
        out = []
        for m in sub.messages():  # type: ignore[attr-defined]
            out += [e["alarm_id"] for e in json.loads(m).get("events", [])]
        return out

    assert got(a) == ["hazmon.storage:comm.LOSS"]
    assert got(b) == ["hazmon.gateway.gw-b:comm.LOSS", "hazmon.storage:comm.LOSS"]
    assert got(c) == []


def test_a_plain_site_map_still_routes_as_before() -> None:
    """Callers that pass a tag/device -> site map (not places) keep working."""
    hub = LiveHub()
    sub, _ = hub.subscribe(Follow(sites=frozenset({"site-b"})), [], SITE_OF.get, tags=TAGS)
    hub.publish_events(
        [event("site-b/gw-b.plc", AlarmState.ACTIVE_UNACK), event("hazmon.storage", AlarmState.ACTIVE_UNACK)],
        SITE_OF.get,
    )
    events = [e for m in sub.messages() for e in json.loads(m)["events"]]
    assert [(e["alarm_id"], e["site"]) for e in events] == [("site-b/gw-b.plc:comm.LOSS", "site-b")]
