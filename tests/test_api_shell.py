"""The API shell on a real database: health, sites, tags, series and latest values."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest

from hazmon.api import create_app
from hazmon.auth import Role, create_token
from hazmon.config import load_settings
from hazmon.reading import US_PER_S, ReadingBatch
from hazmon.runtime import Runtime, run_runtime

ROOT = Path(__file__).resolve().parents[1]
SITE = "demo-tank-farm"
T0 = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
async def runtime(pg_url: str, tmp_path: Path) -> AsyncIterator[Runtime]:
    settings = load_settings(database_url=pg_url, data_dir=tmp_path, site=ROOT / "sites" / "demo-tank-farm.yaml")
    async with run_runtime(settings) as rt:
        yield rt


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(runtime=runtime)
    async with runtime.db.pool.acquire() as conn:
        token = (await create_token(conn, Role.REGULATOR, enterprises=["ecs"], name="shell-test")).secret
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://hazmon", headers=headers
    ) as c:
        yield c


async def test_healthz_reports_database_and_versions(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["database"]["reachable"] is True
    assert body["database"]["server_version"].startswith("15")
    assert body["database"]["edition"] == "postgresql"


async def test_sites_and_tag_filters(client: httpx.AsyncClient) -> None:
    sites = (await client.get("/api/v1/sites")).json()
    assert [s["id"] for s in sites] == ["demo-tank-farm"]
    assert sites[0]["tag_count"] == 81
    tags = (await client.get("/api/v1/tags", params={"equipment": "T201", "kind": "gas"})).json()
    assert {t["id"] for t in tags} == {"T201.AT1", "T201.AT2", "T201.AT3"}
    assert tags[0]["gas"] == {"class": "toxic", "substance": "NH3"}
    bad = await client.get("/api/v1/tags", params={"kind": "humidity"})
    assert bad.status_code == 422


async def test_series_raw_and_downsampled(client: httpx.AsyncClient, runtime: Runtime) -> None:
    key = runtime.tags.key(f"{SITE}/V101.LT")  # the runtime names a tag by its site
    t0 = int(T0.timestamp()) * US_PER_S
    values = np.linspace(5.0, 6.19, 120)
    values[3] = np.nan
    batch = ReadingBatch.from_columns(np.full(120, key), t0 + np.arange(120) * US_PER_S, values)
    await runtime.store.write(batch)
    params = {"start": "2026-11-01T00:00:00Z", "end": "2026-11-01T00:02:00Z"}
    raw = (await client.get(f"/api/v1/tags/{SITE}/V101.LT/series", params=params)).json()
    assert len(raw["points"]) == 120 and raw["unit"] == "m"
    assert (raw["site"], raw["tag"]) == (SITE, "V101.LT")
    assert raw["points"][3][1] is None  # NaN is sent as null, never as invalid JSON
    # by its bare id too: the token's enterprise has one site
    down = (await client.get("/api/v1/tags/V101.LT/series", params={**params, "bucket": "1m", "agg": "max"})).json()
    assert [p[1] for p in down["points"]] == pytest.approx([values[59], values[119]])
    assert (down["site"], down["tag"]) == (SITE, "V101.LT")
    latest = (await client.get("/api/v1/tags/latest", params={"tag": "V101.LT"})).json()
    assert [(v["site"], v["tag"]) for v in latest] == [(SITE, "V101.LT")]
    assert latest[0]["value"] == pytest.approx(values[-1])
    latest = (await client.get("/api/v1/tags/latest", params={"tag": f"{SITE}/V101.LT"})).json()
    assert [(v["site"], v["tag"]) for v in latest] == [(SITE, "V101.LT")]


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/api/v1/tags/NOPE/series", {}, 404),
        (f"/api/v1/tags/{SITE}/NOPE/series", {}, 404),
        ("/api/v1/tags/no-such-site/V101.LT/series", {}, 404),
        ("/api/v1/tags/V101.LT/series", {"bucket": "fortnight"}, 422),
        ("/api/v1/tags/V101.LT/series", {"agg": "median"}, 422),
        (
            "/api/v1/tags/V101.LT/series",
            {"start": "2026-11-02T00:00:00Z", "end": "2026-11-01T00:00:00Z"},
            422,
        ),
        ("/api/v1/tags/V101.LT/series", {"start": "yesterday"}, 422),
        ("/api/v1/tags/latest", {"tag": "NOPE"}, 404),
        ("/api/v1/tags/latest", {"tag": f"{SITE}/NOPE"}, 404),
    ],
)
async def test_bad_parameters_get_clear_errors(
    client: httpx.AsyncClient, path: str, params: dict[str, str], status: int
) -> None:
    r = await client.get(path, params=params)
    assert r.status_code == status
    assert r.json()["detail"]


async def test_openapi_docs_are_served(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert "/api/v1/tags/{tag_id}/series" in spec["paths"]
    assert (await client.get("/docs")).status_code == 200
