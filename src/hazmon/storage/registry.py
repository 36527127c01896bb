"""The site registry in the database: sites are upserted whole, in one transaction, and read back.

Tag keys are permanent: a tag keeps its key across reloads, and a tag dropped from the file is marked
inactive (its readings stay). A tag id is unique within its site: two sites may both have a ``T101.LT``
(the key, and the reference ``site/tag``, tell them apart).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import asyncpg

from hazmon.plant.site import Site, parse_site
from hazmon.plant.tag import TagIndex, tag_ref
from hazmon.regulator.gb18218 import grade


@dataclass(frozen=True, slots=True)
class LoadSummary:
    installations: int
    equipment: int
    tags_added: int
    tags_updated: int
    tags_retired: int

    def __str__(self) -> str:
        return (
            f"{self.installations} installations, {self.equipment} equipment, tags: "
            f"{self.tags_added} added, {self.tags_updated} updated, {self.tags_retired} retired"
        )


def _doc(model: Any) -> str:
    return json.dumps(model.model_dump(mode="json", by_alias=True), ensure_ascii=False)


async def upsert_site(conn: asyncpg.Connection, site: Site) -> LoadSummary:
    async with conn.transaction():
        sid = site.id
        e = site.enterprise
        await conn.execute(
            "INSERT INTO enterprises (id, name, uscc) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE "
            "SET name = EXCLUDED.name, uscc = EXCLUDED.uscc, updated_at = now()",
            e.id,
            e.name,
            e.uscc,
        )
        await conn.execute(
            "INSERT INTO sites (id, enterprise_id, name, doc) VALUES ($1, $2, $3, $4::jsonb) "
            "ON CONFLICT (id) DO UPDATE SET enterprise_id = EXCLUDED.enterprise_id, name = EXCLUDED.name, "
            "doc = EXCLUDED.doc, updated_at = now()",
            sid,
            e.id,
            site.site.name,
            _doc(site.site),
        )
        await conn.execute(
            "DELETE FROM installations WHERE site_id = $1 AND NOT (id = ANY($2::text[]))",
            sid,
            [i.id for i in site.installations],
        )
        await conn.executemany(
            "INSERT INTO installations (site_id, id, name, kind, people_within_500m, r_value, grade, is_major, doc) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb) ON CONFLICT (site_id, id) DO UPDATE SET "
            "name = EXCLUDED.name, kind = EXCLUDED.kind, people_within_500m = EXCLUDED.people_within_500m, "
            "r_value = EXCLUDED.r_value, grade = EXCLUDED.grade, is_major = EXCLUDED.is_major, doc = EXCLUDED.doc",
            [
                (sid, i.id, i.name, i.kind.value, i.people_within_500m, g.r, g.level, g.is_major, _doc(i))
                for i in site.installations
                for g in [grade(i)]
            ],
        )
        await conn.execute(
            "DELETE FROM equipment WHERE site_id = $1 AND NOT (id = ANY($2::text[]))",
            sid,
            [q.id for q in site.equipment],
        )
        await conn.executemany(
            "INSERT INTO equipment (site_id, id, installation_id, name, type, doc) "
            "VALUES ($1, $2, $3, $4, $5, $6::jsonb) ON CONFLICT (site_id, id) DO UPDATE SET "
            "installation_id = EXCLUDED.installation_id, name = EXCLUDED.name, type = EXCLUDED.type, "
            "doc = EXCLUDED.doc",
            [(sid, q.id, q.installation, q.name, q.type.value, _doc(q)) for q in site.equipment],
        )
        existing = {r["id"] for r in await conn.fetch("SELECT id FROM tags WHERE site_id = $1", sid)}
        await conn.executemany(
            "INSERT INTO tags (id, site_id, equipment_id, name, kind, unit, range_lo, range_hi, period_s, doc) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb) ON CONFLICT (site_id, id) DO UPDATE SET "
            "equipment_id = EXCLUDED.equipment_id, name = EXCLUDED.name, kind = EXCLUDED.kind, "
            "unit = EXCLUDED.unit, range_lo = EXCLUDED.range_lo, range_hi = EXCLUDED.range_hi, "
            "period_s = EXCLUDED.period_s, active = true, doc = EXCLUDED.doc",
            [
                (
                    t.id,
                    sid,
                    t.equipment,
                    t.name,
                    t.kind.value,
                    t.unit,
                    t.range[0] if t.range else None,
                    t.range[1] if t.range else None,
                    t.period_s,
                    _doc(t),
                )
                for t in site.tags
            ],
        )
        ids = {t.id for t in site.tags}
        retired = await conn.fetchval(
            "WITH r AS (UPDATE tags SET active = false WHERE site_id = $1 AND active "
            "AND NOT (id = ANY($2::text[])) RETURNING 1) SELECT count(*) FROM r",
            sid,
            list(ids),
        )
        return LoadSummary(
            installations=len(site.installations),
            equipment=len(site.equipment),
            tags_added=len(ids - existing),
            tags_updated=len(ids & existing),
            tags_retired=int(retired),
        )


async def tag_index(conn: asyncpg.Connection) -> TagIndex:
    """Every tag ever registered, active or not, by its reference (``site/tag``), with its permanent key."""
    rows = await conn.fetch("SELECT site_id, id, key FROM tags ORDER BY key")
    return TagIndex([tag_ref(r["site_id"], r["id"]) for r in rows], [r["key"] for r in rows])


async def list_sites(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    sites = await conn.fetch(
        "SELECT s.id, s.name, s.enterprise_id, e.name AS enterprise_name, e.uscc, s.updated_at, "
        "(SELECT count(*) FROM tags t WHERE t.site_id = s.id AND t.active) AS tag_count "
        "FROM sites s JOIN enterprises e ON e.id = s.enterprise_id ORDER BY s.id"
    )
    inst = await conn.fetch(
        "SELECT site_id, id, name, kind, people_within_500m, r_value, grade, is_major "
        "FROM installations ORDER BY site_id, id"
    )
    by_site: dict[str, list[dict[str, Any]]] = {}
    for r in inst:
        by_site.setdefault(r["site_id"], []).append(
            {
                "id": r["id"],
                "name": r["name"],
                "kind": r["kind"],
                "people_within_500m": r["people_within_500m"],
                "gb18218_r": r["r_value"],
                "gb18218_grade": r["grade"],
                "is_major_hazard": r["is_major"],
            }
        )
    return [
        {
            "id": s["id"],
            "name": s["name"],
            "enterprise": {"id": s["enterprise_id"], "name": s["enterprise_name"], "uscc": s["uscc"]},
            "tag_count": s["tag_count"],
            "updated_at": s["updated_at"],
            "installations": by_site.get(s["id"], []),
        }
        for s in sites
    ]


async def list_tags(
    conn: asyncpg.Connection,
    *,
    site: str | None = None,
    equipment: str | None = None,
    kind: str | None = None,
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT key, id, site_id, equipment_id, name, kind, unit, range_lo, range_hi, period_s, doc "
        "FROM tags WHERE active AND ($1::text IS NULL OR site_id = $1) "
        "AND ($2::text IS NULL OR equipment_id = $2) AND ($3::text IS NULL OR kind = $3) ORDER BY site_id, id",
        site,
        equipment,
        kind,
    )
    return [_tag_row(r) for r in rows]


async def get_tag(conn: asyncpg.Connection, site_id: str, tag_id: str) -> dict[str, Any] | None:
    r = await conn.fetchrow(
        "SELECT key, id, site_id, equipment_id, name, kind, unit, range_lo, range_hi, period_s, doc "
        "FROM tags WHERE site_id = $1 AND id = $2",
        site_id,
        tag_id,
    )
    return _tag_row(r) if r else None


async def find_tags(conn: asyncpg.Connection, tag_id: str) -> list[dict[str, Any]]:
    """Every site's tag of this id (a tag id is unique within its site only)."""
    rows = await conn.fetch(
        "SELECT key, id, site_id, equipment_id, name, kind, unit, range_lo, range_hi, period_s, doc "
        "FROM tags WHERE id = $1 ORDER BY site_id",
        tag_id,
    )
    return [_tag_row(r) for r in rows]


def _tag_row(r: asyncpg.Record) -> dict[str, Any]:
    doc = json.loads(r["doc"])
    return {
        "id": r["id"],
        "key": r["key"],
        "site": r["site_id"],
        "equipment": r["equipment_id"],
        "name": r["name"],
        "kind": r["kind"],
        "unit": r["unit"],
        "range": [r["range_lo"], r["range_hi"]] if r["range_lo"] is not None else None,
        "period_s": r["period_s"],
        "gas": doc.get("gas"),
        "signal": doc.get("signal"),
        "states": doc.get("states"),
    }


async def registered_site(conn: asyncpg.Connection, site_id: str) -> Site | None:
    """A site as the registry holds it (its active tags), None when it is not registered."""
    row = await conn.fetchrow(
        "SELECT s.doc, e.id AS ent_id, e.name AS ent_name, e.uscc FROM sites s "
        "JOIN enterprises e ON e.id = s.enterprise_id WHERE s.id = $1",
        site_id,
    )
    if row is None:
        return None

    async def docs(sql: str) -> list[Any]:
        return [json.loads(r["doc"]) for r in await conn.fetch(sql, site_id)]

    doc: dict[str, Any] = {
        "enterprise": {"id": row["ent_id"], "name": row["ent_name"], "uscc": row["uscc"]},
        "site": json.loads(row["doc"]),
        "installations": await docs("SELECT doc FROM installations WHERE site_id = $1 ORDER BY id"),
        "equipment": await docs("SELECT doc FROM equipment WHERE site_id = $1 ORDER BY id"),
        "tags": await docs("SELECT doc FROM tags WHERE site_id = $1 AND active ORDER BY key"),
    }
    return parse_site(doc, f"<site {site_id} in the database>")
