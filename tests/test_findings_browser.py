"""The findings page of the console in a real browser (Debian's chromium, driven by Playwright) against
the demo runtime served by uvicorn: an operator records a major hidden hazard with the form, sees it
in the list and in the enterprise summary, closes it with an evidence note; a regulator then sees it
closed; the audit trail has both changes."""

from __future__ import annotations

import shutil
from datetime import date, timedelta
from pathlib import Path

import pytest

from api_helpers import SITE, demo_runtime, make_tokens, serve
from conftest import IN_CI

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


async def test_operator_records_and_closes_a_finding_in_the_browser(pg_url: str, tmp_path: Path) -> None:
    if not HAVE_CHROMIUM:
        if IN_CI:
            pytest.fail("chromium is not installed, and CI=true forbids skipping")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.async_api import async_playwright, expect

    async with demo_runtime(pg_url, tmp_path) as rt, serve(rt) as host:
        tokens = await make_tokens(rt)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = await browser.new_page(locale="zh-CN")
            await page.goto(f"http://{host}/console/findings")
            await page.fill("#token", tokens.operator)
            await page.click("#load")
            await expect(page.locator("#msg")).to_have_text("0 findings")

            form = page.locator("#create")
            await form.locator("[name=site]").fill(SITE)
            await form.locator("[name=equipment]").fill("T201")
            await form.locator("[name=grade]").select_option("major")
            await form.locator("[name=found_by]").fill("王工")
            await form.locator("[name=deadline]").fill((date.today() + timedelta(days=5)).isoformat())
            await form.locator("[name=description]").fill("氨罐T201安全阀未按期校验")
            await form.locator("[name=corrective_action]").fill("送检安全阀")
            await form.locator("button[type=submit]").click()
            row = page.locator("#rows tr", has_text="氨罐T201安全阀未按期校验")
            await expect(row).to_have_count(1)
            await expect(row).to_contain_text("HI-02")
            await expect(row).to_contain_text("重大")
            await expect(page.locator("#summary")).to_contain_text("1major")

            page.once("dialog", lambda d: d.accept("安全阀已送检，合格证 No. 123"))
            await row.locator("button[data-act=closed]").click()
            await expect(row).to_contain_text("已销号")
            await expect(row).to_contain_text("合格证 No. 123")

            reg = await browser.new_page(locale="zh-CN")
            await reg.goto(f"http://{host}/console/findings")
            await reg.fill("#token", tokens.regulator)
            await reg.click("#load")
            await expect(reg.locator("#rows tr", has_text="氨罐T201")).to_contain_text("closed")
            await expect(reg.locator("#create-section")).to_be_hidden()  # regulators read, they do not record
            await expect(reg.locator("#rows button")).to_have_count(0)
            await browser.close()

    async with demo_runtime(pg_url, tmp_path / "again") as rt, rt.db.pool.acquire() as conn:
        rows = await conn.fetch("SELECT actor, action FROM audit_log WHERE target LIKE 'finding:%' ORDER BY seq")
        assert [(r["actor"], r["action"]) for r in rows] == [("alice", "finding.create"), ("alice", "finding.update")]
        assert await conn.fetchval("SELECT status FROM hazard_findings") == "closed"
