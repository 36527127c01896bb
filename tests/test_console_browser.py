"""The operator console in a real browser (Debian's chromium, driven by Playwright) against a real
`hazmon demo`: simulators, gateways, rule engine, embedded PostgreSQL and API. An operator logs in
with a token, sees the leak's gas alarm arrive, acknowledges it (its activation time stays), shelves
and unshelves it, opens its trend; a regulator sees no action buttons; when the connection drops the
list is greyed out under a "connection lost" banner. Each step is saved as a screenshot under the
test's temporary folder (printed at the end)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from api_helpers import SITE, free_port
from conftest import IN_CI
from tcpproxy import TcpProxy

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL = "V103.GT1:gas.H"  # the demo scenario's propylene leak, first-level gas alarm, as the site names it
ALARM = f"{SITE}/{LOCAL}"  # its id across sites
T = TypeVar("T")


async def until(predicate: Callable[[], Awaitable[T]], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.25)


@dataclass
class Demo:
    base: str  # the API itself
    proxied: str  # the API through a proxy the test can cut
    proxy: TcpProxy
    operator: str
    regulator: str
    data_dir: Path


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[Demo]:
    if not HAVE_CHROMIUM:
        if IN_CI:
            pytest.fail("chromium is not installed, and CI=true forbids skipping (deploy/services.sh installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    # A broker of its own: concurrent demos on the shared broker would share the gas detectors'
    # topics and client ids, and knock each other's MQTT gateway off.
    mqtt_port = free_port()
    broker = await asyncio.create_subprocess_exec(
        mosquitto, "-p", str(mqtt_port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    port = free_port()
    # the embedded database outside pytest's temporary folders, which a concurrent pytest run of
    # the same user may prune while the demo runs
    data_dir = Path(tempfile.mkdtemp(prefix="hazmon-console-test-"))
    log_path = tmp_path / "demo.log"
    log = log_path.open("w")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAZMON_")}

    async def broker_up() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", mqtt_port)
        except OSError:
            return False
        writer.close()
        return True

    await until(broker_up, 10, f"mosquitto on port {mqtt_port}")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hazmon", "demo", "--port", str(port), "--data-dir", str(data_dir),
        "--opcua-port", "0", "--modbus-port", "0", "--mqtt-port", str(mqtt_port),
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    proxy = TcpProxy("127.0.0.1", port)
    try:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:

            async def healthy() -> bool:
                if proc.returncode is not None:
                    raise AssertionError(f"hazmon demo stopped ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
                try:
                    return (await client.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await until(healthy, 90, "the demo's API")

        async def printed_token() -> str:
            m = re.search(r"HAZMON_TOKEN=(\S+)", log_path.read_text())
            return m.group(1) if m else ""

        operator = await until(printed_token, 10, "the operator token the demo prints")
        # `hazmon token create` finds the running demo's database through HAZMON_DATA_DIR
        made = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hazmon", "token", "create", "--role", "regulator", "--enterprise", "ecs",
            "--name", "ruth", env={**env, "HAZMON_DATA_DIR": str(data_dir)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(made.communicate(), 60)
        m = re.search(r"^(hzm_\S+)$", out.decode(), re.M)
        assert made.returncode == 0 and m, out.decode()
        await proxy.start()
        yield Demo(base, f"http://127.0.0.1:{proxy.port}", proxy, operator, m.group(1), data_dir)
    finally:
        await proxy.stop()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
            log.close()
            broker.terminate()
            await broker.wait()
            shutil.rmtree(data_dir, ignore_errors=True)


class Steps:
    """Screenshots of each step, numbered, under the test's temporary folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.n = 0

    async def shot(self, page: Any, name: str) -> None:
        self.n += 1
        await page.screenshot(path=str(self.folder / f"{self.n:02d}-{name}.png"), full_page=True)


async def test_operator_console_in_a_browser(demo: Demo, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    steps = Steps(tmp_path / "screenshots")
    api = httpx.AsyncClient(base_url=demo.base, headers={"Authorization": f"Bearer {demo.operator}"}, timeout=10)
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = await browser.new_page(viewport={"width": 1500, "height": 950}, locale="zh-CN")
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))

            # 1. log in with the token the demo printed
            await page.goto(f"{demo.proxied}/console")
            await page.fill("[data-testid=token-input]", demo.operator)
            await steps.shot(page, "login")
            await page.click("[data-testid=connect]")
            await expect(page.get_by_test_id("connection")).to_contain_text("实时", timeout=20_000)

            # 2. the leak's gas alarm arrives, in the site's local time, with a live value and a sound
            row = page.locator(f'tr[data-id="{ALARM}"]')
            await expect(row).to_be_visible(timeout=90_000)
            await expect(row.get_by_test_id("state")).to_have_text("报警未确认")
            # the tag as the site names it; one site: no site name beside it, no long id
            await expect(row.get_by_test_id("alarm-name")).to_contain_text("V103.GT1 gas.H")
            await expect(row.get_by_test_id("alarm-name")).not_to_contain_text(SITE)
            await expect(row.get_by_test_id("site")).to_have_count(0)
            activated_title = await row.get_by_test_id("activated").get_attribute("title")
            assert activated_title and "Asia/Shanghai" in activated_title
            activated_text = (await row.get_by_test_id("activated").inner_text()).split()[0]
            snap = (await api.get(f"/api/v1/alarms/{ALARM}")).json()
            assert snap["activated_at"].endswith("+08:00"), snap  # ISO with the site's offset
            assert activated_text == snap["activated_at"][11:19]  # the console shows the site's wall clock
            assert re.fullmatch(r"[\d.]+", await row.get_by_test_id("live-value").inner_text())
            assert await page.evaluate("window.hazmonLastTone") in {"high", "critical"}
            await expect(page.get_by_test_id("count-high")).not_to_contain_text(" 0")
            await steps.shot(page, "alarm-arrived")

            # silence stops the horn but acknowledges nothing
            await page.get_by_test_id("silence").click()
            await expect(page.get_by_test_id("silence")).to_be_hidden()
            await expect(row.get_by_test_id("state")).to_have_text("报警未确认")

            # 3. acknowledge: the state changes, the activation time stays, the last change is the operator's
            await row.get_by_test_id("act-ack").click()
            await expect(row.get_by_test_id("state")).to_have_text("报警已确认", timeout=10_000)
            await expect(row.get_by_test_id("activated")).to_contain_text(activated_text)
            await expect(row.get_by_test_id("changed")).to_contain_text("demo-operator")
            after = (await api.get(f"/api/v1/alarms/{ALARM}")).json()
            assert after["activated_at"] == snap["activated_at"] and after["since"] != snap["since"], after
            await steps.shot(page, "acknowledged")

            # 4. shelve for a chosen time: the row says until when and how long is left, and offers unshelve
            await row.get_by_test_id("act-shelve").click()
            await page.get_by_test_id("shelve-duration").select_option("900")
            await page.get_by_test_id("dialog-reason").fill("gas detector being recalibrated")
            await page.get_by_test_id("dialog-ok").click()
            await expect(row.get_by_test_id("state")).to_contain_text("已搁置", timeout=10_000)
            await expect(row.get_by_test_id("state")).to_contain_text("剩余")
            await expect(row.get_by_test_id("act-shelve")).to_have_count(0)
            shelved = (await api.get(f"/api/v1/alarms/{ALARM}")).json()
            assert shelved["state"] == "shelved" and shelved["shelved_until"].endswith("+08:00"), shelved
            await steps.shot(page, "shelved")

            # 5. unshelve
            await row.get_by_test_id("act-unshelve").click()
            await expect(row.get_by_test_id("state")).not_to_contain_text("已搁置", timeout=10_000)
            await expect(row.get_by_test_id("act-shelve")).to_have_count(1)
            # back from the shelf the alarm is annunciated afresh (the engine's activation time): the
            # console shows the API's activation time, not the time of the unshelve action
            unshelved = (await api.get(f"/api/v1/alarms/{ALARM}")).json()
            await expect(row.get_by_test_id("activated")).to_contain_text(unshelved["activated_at"][11:19])
            await steps.shot(page, "unshelved")

            # 6. the trend of the alarm's tag: a pen, its alarm limits, a time axis in local time; the response
            await row.locator("td").nth(3).click()
            trend = page.get_by_test_id("trend")
            await expect(page.locator("#trend-title")).to_contain_text("V103.GT1")
            await expect(trend.get_by_test_id("pen")).to_have_count(1, timeout=10_000)
            await expect(trend.get_by_test_id("limit-line")).to_have_count(2)  # H 25 and HH 50 %LEL
            ticks = await trend.get_by_test_id("time-tick").all_text_contents()
            assert ticks and all(re.fullmatch(r"\d\d:\d\d", x) for x in ticks), ticks
            await expect(page.get_by_test_id("alarm-response")).to_contain_text("可燃气体泄漏")
            await expect(page.locator("#detail-title")).to_contain_text(LOCAL)
            await expect(page.locator("#detail-title")).not_to_contain_text(SITE)
            await page.get_by_role("button", name="1 h").click()
            await expect(trend.get_by_test_id("pen")).to_have_count(1, timeout=10_000)
            await steps.shot(page, "trend")

            # the plant overview shows the installations' GB 18218 grade and the alarm on V103
            await page.click("#tabs button[data-tab=overview]")
            await expect(page.get_by_test_id("grade").first).to_contain_text("重大危险源")
            await expect(page.locator('[data-equipment="V103"]')).to_contain_text("V103.GT1")
            await steps.shot(page, "overview")

            # the journal, searched by tag: the acknowledge and the shelving with the operator's name
            await page.click("#tabs button[data-tab=history]")
            await page.fill("#h-tag", "V103.GT1")
            await page.click("#h-form button[type=submit]")
            history = page.get_by_test_id("history-rows")
            await expect(history).to_contain_text("demo-operator", timeout=10_000)
            await expect(history).to_contain_text("gas detector being recalibrated")
            await steps.shot(page, "history")

            # the shift handover report: the standing alarm, the comment, alarms per 10 minutes
            await page.click("#tabs button[data-tab=handover]")
            report = page.get_by_test_id("handover")
            await expect(report).to_contain_text(LOCAL, timeout=10_000)
            await expect(report).not_to_contain_text(ALARM)
            await expect(report).to_contain_text("gas detector being recalibrated")
            await expect(report).to_contain_text("确认 1 次")
            await steps.shot(page, "handover")
            await page.click("#tabs button[data-tab=alarms]")

            # 7. a regulator reads the same list without any action button
            reg = await browser.new_page(viewport={"width": 1500, "height": 950}, locale="zh-CN")
            await reg.goto(f"{demo.proxied}/console")
            await reg.fill("[data-testid=token-input]", demo.regulator)
            await reg.click("[data-testid=connect]")
            await expect(reg.locator(f'tr[data-id="{ALARM}"]')).to_be_visible(timeout=20_000)
            assert await reg.locator("[data-act]").count() == 0
            await expect(reg.locator("tbody#alarms input[type=checkbox]").first).to_be_hidden()
            await expect(reg.get_by_test_id("ack-selected")).to_be_hidden()
            await steps.shot(reg, "regulator")
            await reg.close()

            # 8. the connection drops: the list is greyed out and says so, then recovers
            await demo.proxy.go_down()
            banner = page.get_by_test_id("stale-banner")
            await expect(banner).to_be_visible(timeout=10_000)
            await expect(banner).to_contain_text("连接中断")
            await expect(banner).to_contain_text("最后更新")
            assert await page.evaluate("document.body.classList.contains('stale')")
            await page.wait_for_timeout(2500)  # let "last update N s ago" count up for the screenshot
            await steps.shot(page, "connection-lost")
            await demo.proxy.come_up()
            await expect(banner).to_be_hidden(timeout=20_000)
            await steps.shot(page, "reconnected")

            # English, on a click (and remembered); names in English then
            await page.get_by_test_id("lang").click()
            await expect(page.locator("h1")).to_contain_text("Alarm console")
            await expect(row.get_by_test_id("state")).to_contain_text("unacknowledged")
            await expect(row).to_contain_text("Propylene sphere 1")
            await expect(page.get_by_test_id("connection")).to_contain_text("live")
            await expect(page.get_by_test_id("event-log")).to_contain_text("acknowledge")
            await steps.shot(page, "english")

            # /docs renders from the package's own files (this machine has no Internet) and can authorize
            docs = await browser.new_page(viewport={"width": 1300, "height": 900})
            await docs.goto(f"{demo.proxied}/docs")
            await expect(docs.get_by_role("button", name="Authorize")).to_be_visible(timeout=20_000)
            await expect(docs.locator(".opblock-summary-path").first).to_be_visible()
            await steps.shot(docs, "api-docs")

            assert errors == [], errors
            await browser.close()
    finally:
        await api.aclose()
        print(f"\nconsole screenshots: {steps.folder}")


async def test_full_lifecycle_in_a_browser(pg_url: str, tmp_path: Path) -> None:
    """On a runtime fed by the test: acknowledge several at once, comment, remove from and return to
    service with a reason, and reset a latched gas alarm once the gas has gone."""
    from playwright.async_api import async_playwright, expect

    from api_helpers import demo_api, ingest, serve

    if not HAVE_CHROMIUM:
        if IN_CI:
            pytest.fail("chromium is not installed, and CI=true forbids skipping (deploy/services.sh installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    steps = Steps(tmp_path / "screenshots")
    async with demo_api(pg_url, tmp_path / "data") as (rt, tokens, client), serve(rt) as host:
        await ingest(rt, {"V101.GT1": 30.0, "V102.GT1": 60.0, "T201.AT1": 25.0})
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = await browser.new_page(viewport={"width": 1500, "height": 950}, locale="en-GB")
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            # a revoked token is refused with a clear message, back at the token prompt
            await page.goto(f"http://{host}/console?token={tokens.revoked}")
            await expect(page.locator("#login-error")).to_contain_text("401")
            await expect(page.get_by_test_id("token-input")).to_be_visible()
            # an English browser, but the site's locale (zh-CN) decides the language
            await page.goto(f"http://{host}/console?token={tokens.operator}")
            rows = page.get_by_test_id("alarm-row")
            await expect(rows).to_have_count(4, timeout=20_000)  # V101 H, V102 H and HH, T201 H
            # priority first: the critical one on top
            await expect(rows.first).to_have_attribute("data-id", f"{SITE}/V102.GT1:gas.HH")

            # filter by installation: the ammonia alarm only
            await page.get_by_test_id("filter-installation").select_option(f"{SITE}/HI-02")
            await expect(rows).to_have_count(1)
            await expect(rows.first).to_have_attribute("data-id", f"{SITE}/T201.AT1:gas.H")
            await page.get_by_test_id("filter-installation").select_option("")
            await expect(rows).to_have_count(4)

            # acknowledge several at once
            for alarm_id in (f"{SITE}/V101.GT1:gas.H", f"{SITE}/V102.GT1:gas.H"):
                await page.locator(f'tr[data-id="{alarm_id}"] input[data-check]').check()
            await page.get_by_test_id("ack-selected").click()
            for alarm_id in (f"{SITE}/V101.GT1:gas.H", f"{SITE}/V102.GT1:gas.H"):
                state = page.locator(f'tr[data-id="{alarm_id}"]').get_by_test_id("state")
                await expect(state).to_have_text("报警已确认", timeout=10_000)
            critical = page.locator(f'tr[data-id="{SITE}/V102.GT1:gas.HH"]')
            await expect(critical.get_by_test_id("state")).to_have_text("报警未确认")
            await steps.shot(page, "acknowledged-several")

            # comment
            ammonia = page.locator(f'tr[data-id="{SITE}/T201.AT1:gas.H"]')
            await ammonia.get_by_test_id("act-comment").click()
            await page.get_by_test_id("dialog-text").fill("field check under way")
            await page.get_by_test_id("dialog-ok").click()
            await expect(ammonia).to_contain_text("alice", timeout=10_000)

            # out of service with a reason, then back
            await ammonia.get_by_test_id("act-oos").click()
            await page.get_by_test_id("dialog-reason").fill("detector replaced")
            await page.get_by_test_id("dialog-ok").click()
            await expect(ammonia.get_by_test_id("state")).to_have_text("已停用", timeout=10_000)
            await expect(ammonia.get_by_test_id("act-shelve")).to_have_count(0)
            await steps.shot(page, "out-of-service")
            await ammonia.get_by_test_id("act-rts").click()
            await expect(ammonia.get_by_test_id("state")).not_to_have_text("已停用", timeout=10_000)

            # the gas goes: the latched, acknowledged alarm offers a reset, and the reset clears it
            v101 = page.locator(f'tr[data-id="{SITE}/V101.GT1:gas.H"]')
            await expect(v101.get_by_test_id("act-reset")).to_have_count(0)
            await ingest(rt, {"V101.GT1": 0.0})
            await expect(v101.get_by_test_id("act-reset")).to_have_count(1, timeout=10_000)
            await steps.shot(page, "resettable")
            await v101.get_by_test_id("act-reset").click()
            await expect(v101).to_have_count(0, timeout=10_000)
            await steps.shot(page, "reset")

            await rt.flush_journal()
            auth = {"Authorization": f"Bearer {tokens.operator}"}
            r = await client.get("/api/v1/alarms/history", params={"user": "alice"}, headers=auth)
            journal = r.json()["events"]
            assert {e["action"] for e in journal} >= {
                "acknowledge",
                "comment",
                "remove_from_service",
                "return_to_service",
                "reset",
            }
            assert errors == [], errors
            await browser.close()
    print(f"\nconsole screenshots: {steps.folder}")


NORTH = "north-works"


def _twin_site(path: Path) -> Path:
    """The demo plant again, for another enterprise and under another name: every tag id the same."""
    import yaml

    from api_helpers import SITE_FILE
    from hazmon.plant.site import load_site, uscc_check_char

    doc = load_site(SITE_FILE).model_dump(mode="json", by_alias=True, exclude_none=True)
    uscc = "91320600MA1XK7Q21" + uscc_check_char("91320600MA1XK7Q21")
    doc["enterprise"] = {"id": "ntc", "name": "Nantong Chemicals", "uscc": uscc}
    doc["site"] = {**doc["site"], "id": NORTH, "name": "Nantong north works", "name_zh": "南通北厂"}
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


async def test_two_sites_with_the_same_tag_ids_in_a_browser(pg_url: str, tmp_path: Path) -> None:
    """A token that sees two sites which both have a V101.GT1: each alarm shows the tag as its site
    names it with the site's name beside it, its own live value, trend and journal; acknowledging one
    acknowledges that one only."""
    from urllib.parse import unquote

    from playwright.async_api import async_playwright, expect

    from api_helpers import RULES, SITE_FILE, ingest, serve
    from hazmon.auth import Role, create_token
    from hazmon.config import load_settings
    from hazmon.runtime import run_runtime

    if not HAVE_CHROMIUM:
        if IN_CI:
            pytest.fail("chromium is not installed, and CI=true forbids skipping (deploy/services.sh installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    steps = Steps(tmp_path / "screenshots")
    settings = load_settings(
        database_url=pg_url, data_dir=tmp_path / "data", site=SITE_FILE, sites=[_twin_site(tmp_path / "north.yaml")],
        rules=RULES,
    )  # fmt: skip
    demo_alarm, north_alarm = f"{SITE}/V101.GT1:gas.H", f"{NORTH}/V101.GT1:gas.H"
    async with run_runtime(settings) as rt, serve(rt) as host:
        async with rt.db.pool.acquire() as conn:
            token = (await create_token(conn, Role.OPERATOR, enterprises=["ecs", "ntc"], name="olga")).secret
        # the same detector id raises the same alarm id in both sites, with different readings
        await ingest(rt, {f"{SITE}/V101.GT1": 30.0, f"{NORTH}/V101.GT1": 40.0})
        assert rt.forwarder is not None
        await rt.forwarder.flush(10)  # stored: the trends read them back
        assert rt.engine is not None
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = await browser.new_page(viewport={"width": 1500, "height": 950}, locale="zh-CN")
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            requests: list[str] = []
            page.on("request", lambda r: requests.append(unquote(r.url)))  # ":" goes as %3A
            await page.goto(f"http://{host}/console?token={token}")
            await expect(page.locator("#site-name")).to_contain_text("南通北厂")
            rows = page.get_by_test_id("alarm-row")
            await expect(rows).to_have_count(2, timeout=20_000)
            demo_row = page.locator(f'tr[data-id="{demo_alarm}"]')
            north_row = page.locator(f'tr[data-id="{north_alarm}"]')
            # each shows the tag as its site names it, the site's name beside it, its own live value
            for row, site_name, value in (
                (demo_row, "长江化工园区罐区（演示）", "30.00"),
                (north_row, "南通北厂", "40.00"),
            ):
                name = row.get_by_test_id("alarm-name")
                await expect(name).to_contain_text("V101.GT1 gas.H")
                await expect(name).not_to_contain_text("/")
                await expect(row.get_by_test_id("site")).to_have_text(site_name)
                await expect(row.get_by_test_id("live-value")).to_have_text(value)
                await expect(row.get_by_test_id("state")).to_have_text("报警未确认")
            await steps.shot(page, "two-sites")

            # acknowledge the north works' alarm: that one only
            await north_row.get_by_test_id("act-ack").click()
            await expect(north_row.get_by_test_id("state")).to_have_text("报警已确认", timeout=10_000)
            await expect(north_row.get_by_test_id("changed")).to_contain_text("olga")
            await expect(demo_row.get_by_test_id("state")).to_have_text("报警未确认")
            assert rt.engine.get(north_alarm).acked and not rt.engine.get(demo_alarm).acked
            assert f"http://{host}/api/v1/alarms/{NORTH}/V101.GT1:gas.H/ack" in requests
            await expect(page.get_by_test_id("event-log")).to_contain_text("V101.GT1:gas.H (南通北厂)")

            # its detail, response and trend are the north works' own
            await north_row.get_by_test_id("alarm-name").click()
            await expect(page.locator("#detail-title")).to_contain_text("V101.GT1:gas.H (南通北厂)")
            await expect(page.get_by_test_id("alarm-response")).to_contain_text("可燃气体泄漏")
            await expect(page.locator("#trend-title")).to_contain_text("V101.GT1 (南通北厂)")
            await expect(page.get_by_test_id("pen-label")).to_have_count(1)
            await expect(page.get_by_test_id("pen-label")).to_contain_text("V101.GT1 (南通北厂)")
            await expect(page.get_by_test_id("trend").get_by_test_id("pen")).to_have_count(1, timeout=10_000)
            assert any(f"/api/v1/tags/{NORTH}/V101.GT1/series?" in u for u in requests), requests
            assert any(f"/api/v1/console/response/{NORTH}/V101.GT1:gas.H" in u for u in requests), requests
            # the pen is the north detector's readings (40 %LEL), not the demo's (30)
            pen = await page.evaluate(f"trend.data.get('{NORTH}/V101.GT1').map((p) => p[1])")
            assert pen and set(pen) == {40.0}, pen
            await steps.shot(page, "north-trend")

            # the overview: a panel per site, each V101 tile with its own reading
            await page.click("#tabs button[data-tab=overview]")
            await expect(page.get_by_test_id("site-title")).to_have_count(2)
            await expect(page.locator(f'[data-site="{NORTH}"][data-equipment="V101"]')).to_contain_text("40.00")
            await expect(page.locator(f'[data-site="{SITE}"][data-equipment="V101"]')).to_contain_text("30.00")
            await steps.shot(page, "two-sites-overview")
            # a tile opens the alarm list filtered to that site's equipment
            await page.locator(f'[data-site="{NORTH}"][data-equipment="V101"]').click()
            await expect(rows).to_have_count(1)
            await expect(rows.first).to_have_attribute("data-id", north_alarm)
            await page.get_by_test_id("filter-installation").select_option("")
            await expect(rows).to_have_count(2)

            # the journal, site by site: the acknowledgement is the north works'
            await rt.flush_journal()
            await page.click("#tabs button[data-tab=history]")
            await page.get_by_test_id("history-site").select_option(NORTH)
            await page.fill("#h-tag", "V101.GT1")
            await page.click("#h-form button[type=submit]")
            history = page.get_by_test_id("history-rows")
            await expect(history).to_contain_text("olga", timeout=10_000)
            await expect(history.get_by_test_id("site").first).to_have_text("南通北厂")
            await page.get_by_test_id("history-site").select_option(SITE)
            await page.click("#h-form button[type=submit]")
            await expect(history.get_by_test_id("site").first).to_have_text("长江化工园区罐区（演示）", timeout=10_000)
            await expect(history).to_contain_text("V101.GT1:gas.H")
            await expect(history).not_to_contain_text("olga")
            await steps.shot(page, "two-sites-history")

            # in English, the sites' English names
            await page.click("#tabs button[data-tab=alarms]")
            await page.get_by_test_id("lang").click()
            await expect(north_row.get_by_test_id("site")).to_have_text("Nantong north works")
            await expect(north_row.get_by_test_id("state")).to_have_text("active, acknowledged")
            await expect(demo_row.get_by_test_id("state")).to_have_text("active, unacknowledged")
            assert errors == [], errors
            await browser.close()
    print(f"\nconsole screenshots: {steps.folder}")
