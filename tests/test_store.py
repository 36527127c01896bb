"""Storage on both databases: migrations, binary COPY writes, idempotent retries, queries."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import numpy as np
import pytest

from hazmon.plant.site import Site, load_site, parse_site, uscc_check_char
from hazmon.reading import US_PER_S, Quality, ReadingBatch
from hazmon.storage.database import Database, connect
from hazmon.storage.migrate import discover, migrate
from hazmon.storage.registry import get_tag, list_sites, list_tags, tag_index, upsert_site
from hazmon.storage.store import Aggregate, ReadingStore

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 11, 1, tzinfo=UTC)
T0_US = int(T0.timestamp()) * US_PER_S


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = await connect(db_url, pool_size=4)
    yield database
    await database.close()


async def test_readings_table_matches_the_database(db: Database) -> None:
    async with db.pool.acquire() as conn:
        hyper = None
        if db.caps.timescaledb:
            hyper = await conn.fetchval(
                "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_name = 'readings'"
            )
            assert hyper == 1
            assert db.caps.license in ("apache", "timescale")
        else:
            brin = await conn.fetchval(
                "SELECT count(*) FROM pg_indexes WHERE tablename = 'readings' AND indexdef LIKE '%USING brin%'"
            )
            assert brin == 1
        # a second run is a no-op
        assert await migrate(conn) == []
        versions = await conn.fetchval("SELECT count(*) FROM schema_version")
        assert versions == len(discover())


def _batch(n_tags: int, seconds: int, start_us: int = T0_US) -> ReadingBatch:
    tags = np.tile(np.arange(n_tags, dtype=np.int32), seconds)
    ts = np.repeat(start_us + np.arange(seconds, dtype=np.int64) * US_PER_S, n_tags)
    value = np.sin(np.arange(len(tags)) / 10.0) * 10 + tags
    return ReadingBatch.from_columns(tags, ts, value, np.zeros(len(tags), dtype=np.uint8))


async def test_write_round_trips_exactly(db: Database) -> None:
    store = ReadingStore(db.pool, db.caps)
    batch = _batch(5, 120)
    batch.quality[7] = Quality.BAD
    batch.value[9] = np.nan
    assert await store.write(batch) == len(batch)
    series = await store.raw_series(2, T0, T0 + timedelta(hours=1))
    mask = batch.tag == 2
    assert len(series.times) == int(mask.sum())
    assert series.times[0] == T0
    assert np.allclose(np.array(series.values, dtype=float), batch.value[mask], equal_nan=True)
    assert series.qualities is not None and series.qualities[1] == int(Quality.BAD)  # row 7 = tag 2, t=1 s


async def test_same_batch_twice_is_stored_once(db: Database) -> None:
    store = ReadingStore(db.pool, db.caps)
    batch = _batch(3, 10)
    assert await store.write(batch) == 30
    assert await store.write(batch) == 0
    assert await store.count() == 30
    other = ReadingBatch(batch.tag, batch.ts + 10 * US_PER_S, batch.value, batch.quality, uuid.uuid4())
    assert await store.write(other) == 30
    assert await store.count() == 60


async def test_a_restart_sending_the_same_readings_again_stores_them_once(db: Database) -> None:
    """Issue 11, item 10: after a restart an OPC UA subscription delivers every unchanged value again,
    in a new batch (new batch_id). Those rows are already stored: none is added, the rest are."""
    store = ReadingStore(db.pool, db.caps)
    first = _batch(4, 10)
    assert await store.write(first) == 40
    for _restart in range(3):
        again = ReadingBatch(first.tag.copy(), first.ts.copy(), first.value.copy(), first.quality.copy(), uuid.uuid4())
        assert await store.write(again) == 0
    # a batch that overlaps: half of it stored before, half new (and a duplicate within the batch)
    tags = np.array([0, 1, 0, 1, 1], dtype=np.int32)
    ts = np.array([T0_US, T0_US, T0_US + 100 * US_PER_S, T0_US + 100 * US_PER_S, T0_US + 100 * US_PER_S])
    mixed = ReadingBatch.from_columns(tags, ts, np.arange(5.0), np.zeros(5, dtype=np.uint8))
    assert await store.write(mixed) == 2
    assert await store.count() == 42
    async with db.pool.acquire() as conn:
        dupes = await conn.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM readings GROUP BY tag, time HAVING count(*) > 1) d"
        )
        assert dupes == 0
        # the first value stored is kept (a restart does not rewrite history)
        assert await conn.fetchval("SELECT value FROM readings WHERE tag = 0 AND time = $1", T0) == first.value[0]


async def test_migration_040_removes_duplicates_left_by_earlier_restarts(db_url: str, tmp_path: Path) -> None:
    """A database written before the unique key holds up to three copies of a row; the migration keeps one."""
    before = tmp_path / "before"
    before.mkdir()
    for mig in discover():
        if mig.version < 40:
            (before / f"{mig.version:03d}_{mig.name}.sql").write_text(mig.sql, encoding="utf-8")
    name = db_url.rpartition("/")[2]
    base = db_url.rpartition("/")[0]
    admin = await asyncpg.connect(f"{base}/postgres")
    try:
        old = f"{name}_old"
        await admin.execute(f'CREATE DATABASE "{old}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(f"{base}/{old}")
    try:
        await migrate(conn, before)
        await conn.execute(
            "INSERT INTO readings (time, tag, value, quality) "
            "SELECT $1::timestamptz + make_interval(secs => s), t, s, 0 "
            "FROM generate_series(0, 9) s, generate_series(0, 3) t, generate_series(1, 3) copies "
            "WHERE copies <= 1 + t % 3",
            T0,
        )
        assert await conn.fetchval("SELECT count(*) FROM readings") == 10 * (1 + 2 + 3 + 1)
        applied = await migrate(conn)
        assert 40 in [m.version for m in applied]
        assert await conn.fetchval("SELECT count(*) FROM readings") == 40
        unique = await conn.fetchval(
            "SELECT indisunique FROM pg_index WHERE indexrelid = 'readings_tag_time'::regclass"
        )
        assert unique
    finally:
        await conn.close()
        admin = await asyncpg.connect(f"{base}/postgres")
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{old}" WITH (FORCE)')
        finally:
            await admin.close()


async def test_downsampled_series_in_minute_buckets(db: Database) -> None:
    store = ReadingStore(db.pool, db.caps)
    batch = _batch(1, 180)  # three minutes of 1 Hz data for tag 0
    batch.value[:] = np.arange(180, dtype=float)
    await store.write(batch)
    end = T0 + timedelta(minutes=3)
    avg = await store.downsampled_series(0, T0, end, timedelta(minutes=1), Aggregate.AVG)
    assert avg.times == [T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)]
    assert avg.values == [29.5, 89.5, 149.5]
    first = await store.downsampled_series(0, T0, end, timedelta(minutes=1), Aggregate.FIRST)
    last = await store.downsampled_series(0, T0, end, timedelta(minutes=1), Aggregate.LAST)
    count = await store.downsampled_series(0, T0, end, timedelta(minutes=1), Aggregate.COUNT)
    mx = await store.downsampled_series(0, T0, end, timedelta(minutes=1), Aggregate.MAX)
    assert first.values == [0, 60, 120] and last.values == [59, 119, 179]
    assert count.values == [60, 60, 60] and mx.values == [59, 119, 179]


async def test_latest_value_per_tag(db: Database) -> None:
    store = ReadingStore(db.pool, db.caps)
    await store.write(_batch(4, 30))
    latest = await store.latest([0, 1, 2, 3, 99])
    assert [lv.tag for lv in latest] == [0, 1, 2, 3]
    assert all(lv.time == T0 + timedelta(seconds=29) for lv in latest)


async def test_site_load_is_whole_and_keeps_tag_keys(db: Database) -> None:
    site = load_site(ROOT / "sites" / "demo-tank-farm.yaml")
    async with db.pool.acquire() as conn:
        summary = await upsert_site(conn, site)
        assert summary.tags_added == len(site.tags)
        keys_before = dict((await tag_index(conn)).items())
        again = await upsert_site(conn, site)
        assert again.tags_added == 0 and again.tags_updated == len(site.tags)
        assert dict((await tag_index(conn)).items()) == keys_before
        sites = await list_sites(conn)
        assert sites[0]["id"] == "demo-tank-farm"
        grades = {i["id"]: i["gb18218_grade"] for i in sites[0]["installations"]}
        assert grades == {"HI-01": 1, "HI-02": 1, "HI-03": 3}
        gas = await list_tags(conn, site="demo-tank-farm", kind="gas")
        assert gas and all(t["kind"] == "gas" for t in gas)


async def test_site_load_failure_leaves_nothing(db: Database) -> None:
    """A value the database cannot hold (a NUL in the last tag's name, past the site file's own check)
    fails the load: the enterprise, the site, its installations, equipment and every tag written before
    it are rolled back."""
    site = load_site(ROOT / "sites" / "demo-tank-farm.yaml")
    last = site.tags[-1].model_copy(update={"name": "bad\x00name"})
    site = site.model_copy(update={"tags": [*site.tags[:-1], last]})
    async with db.pool.acquire() as conn:
        with pytest.raises(asyncpg.DataError):
            await upsert_site(conn, site)
        for table in ("enterprises", "sites", "installations", "equipment", "tags"):
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table


def _twin(site: Site, site_id: str = "north-works", drop: str | None = None) -> Site:
    """The same plant for another enterprise: every tag id the same (less ``drop``)."""
    doc = site.model_dump(mode="json", by_alias=True, exclude_none=True)
    doc["enterprise"] = {
        "id": "ntc",
        "name": "Nantong Chemicals",
        "uscc": "91320600MA1XK7Q21" + uscc_check_char("91320600MA1XK7Q21"),
    }
    doc["site"] = {**doc["site"], "id": site_id, "name": "Nantong north works"}
    doc["tags"] = [t for t in doc["tags"] if t["id"] != drop]
    return parse_site(doc)


async def test_two_sites_may_have_the_same_tag_ids(db: Database) -> None:
    """Tag ids are unique within their site: a second enterprise's T101.LT is its own tag, with its own
    permanent key; retiring it leaves the first site's tag of that id alone."""
    demo = load_site(ROOT / "sites" / "demo-tank-farm.yaml")
    north = _twin(demo)
    async with db.pool.acquire() as conn:
        assert (await upsert_site(conn, demo)).tags_added == len(demo.tags)
        assert (await upsert_site(conn, north)).tags_added == len(north.tags)  # none refused
        index = await tag_index(conn)
        keys = dict(index.items())
        assert len(keys) == 2 * len(demo.tags) and len(set(keys.values())) == len(keys)
        assert keys["demo-tank-farm/V101.LT"] != keys["north-works/V101.LT"]
        assert {t["site"] for t in await list_tags(conn)} == {"demo-tank-farm", "north-works"}
        assert len(await list_tags(conn, site="north-works")) == len(demo.tags)
        # reloads (in either order) keep every tag's own key
        await upsert_site(conn, north)
        await upsert_site(conn, demo)
        assert dict((await tag_index(conn)).items()) == keys
        # north-works retires its V101.LT: demo-tank-farm's stays active, both keep their keys
        retired = await upsert_site(conn, _twin(demo, drop="V101.LT"))
        assert retired.tags_retired == 1 and retired.tags_added == 0
        assert dict((await tag_index(conn)).items()) == keys
        active = {(t["site"], t["id"]) for t in await list_tags(conn)}
        assert ("demo-tank-farm", "V101.LT") in active and ("north-works", "V101.LT") not in active
        demo_tag = await get_tag(conn, "demo-tank-farm", "V101.LT")
        north_tag = await get_tag(conn, "north-works", "V101.LT")
        assert demo_tag is not None and demo_tag["key"] == keys["demo-tank-farm/V101.LT"]
        assert north_tag is not None and north_tag["key"] == keys["north-works/V101.LT"]
        # back in the file: the same key again, active
        again = await upsert_site(conn, north)
        assert again.tags_added == 0 and again.tags_updated == len(north.tags)
        assert dict((await tag_index(conn)).items()) == keys
        assert ("north-works", "V101.LT") in {(t["site"], t["id"]) for t in await list_tags(conn)}


async def test_broken_migration_changes_nothing(pg_url: str, tmp_path: Path) -> None:
    (tmp_path / "001_good.sql").write_text("CREATE TABLE t_good (x int);")
    (tmp_path / "002_bad.sql").write_text("CREATE TABLE t_bad (x int); SELECT no_such_function();")
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("DROP TABLE schema_version")
        with pytest.raises(Exception, match=r"002_bad\.sql failed"):
            await migrate(conn, tmp_path)
        assert await conn.fetchval("SELECT to_regclass('t_good') IS NOT NULL")
        assert not await conn.fetchval("SELECT to_regclass('t_bad') IS NOT NULL")
        assert await conn.fetchval("SELECT max(version) FROM schema_version") == 1
    finally:
        await conn.close()


async def test_restarting_hazmon_does_not_store_unchanged_opcua_values_again(pg_url: str, tmp_path: Path) -> None:
    """Issue 11, item 10, end to end: hazmon with an OPC UA subscription on 16 unchanged variables,
    restarted twice. Each start delivers the 16 current values again (with their source times); the
    store keeps 16 rows, not 16 more per restart."""
    import yaml

    from gateway_helpers import EXAMPLE_NS, OpcServer, wait_for
    from hazmon.config import load_settings
    from hazmon.gateways.config import parse_gateway_config
    from hazmon.runtime import run_runtime

    opc = OpcServer(per_device=16)
    await opc.start(initial=42.0)
    try:
        site_doc = yaml.safe_load((ROOT / "tests" / "data" / "mini-site.yaml").read_text(encoding="utf-8"))
        site_doc["tags"] = [
            {"id": f"UA.{n}", "name": n, "kind": "pressure", "equipment": "TK", "unit": "kPa", "range": [0, 100]}
            for n in opc.names()
        ]
        site_doc["equipment"][0].pop("in_service_tag", None)
        site_file = tmp_path / "ua-site.yaml"
        site_file.write_text(yaml.safe_dump(site_doc, allow_unicode=True), encoding="utf-8")
        gateway = {
            "id": "ua",
            "protocol": "opcua",
            "site": site_doc["site"]["id"],
            "endpoint": opc.endpoint,
            "namespace": EXAMPLE_NS,
            "publishing_interval_ms": 100,
            "timeout_s": 2,
            "tags": [{"tag": f"UA.{n}", "node": f"s={n}"} for n in opc.names()],
        }
        config = parse_gateway_config({"gateway": gateway})
        settings = load_settings(database_url=pg_url, data_dir=tmp_path / "data", site=site_file, rules=[], gateways=[])
        conn = await asyncpg.connect(pg_url)
        try:
            for start in range(3):
                async with run_runtime(settings, gateway_configs=[config]) as rt:
                    await wait_for(lambda rt=rt: rt.stats.readings >= 16, timeout=30, what="the 16 current values")
                    assert rt.forwarder is not None
                    await rt.forwarder.flush(10)
                    stored = await conn.fetchval("SELECT count(*) FROM readings")
                    assert stored == 16, f"start {start + 1}: {stored} rows stored for 16 unchanged values"
            assert await conn.fetchval("SELECT count(DISTINCT (tag, time)) FROM readings") == 16
            assert await conn.fetchval("SELECT min(value) FROM readings") == 42.0
        finally:
            await conn.close()
    finally:
        await opc.stop()
