"""The operator console page: served without a token (it holds no data), and wired to the live
stream and to the alarm actions that do need one."""

from __future__ import annotations

import httpx

from hazmon.api import create_app


async def test_console_is_served_and_uses_the_api() -> None:
    app = create_app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hazmon") as client:
        r = await client.get("/console")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "/api/v1/live?token=" in page  # the live alarm list
    for action in ("/ack", "/shelve", "/comment"):
        assert action in page
    assert "Authorization: `Bearer ${token}`" in page  # every action carries the operator's token
