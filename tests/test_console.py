"""The web console at /ui: its security headers, and its JavaScript run by a real browser
(Debian's chromium, headless, driven through chromedriver) against a real stack."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import ROOT, AgentProcess, require, start_agent, wait_for
from test_gateway import gateway_settings

from hodei.api.app import create_app
from hodei.client import HodeiClient
from hodei.plugin.server import ControlPlane
from hodei.plugin.settings import ServerSettings

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - require() below says what is missing
    webdriver = None  # type: ignore[assignment]

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = ROOT / "artifacts"
TOKENS = ("boss:admin+invoke+read", "viewer:read")


async def test_the_console_sends_its_security_headers(settings: ServerSettings) -> None:
    async with TestClient(TestServer(create_app(gateway_settings(settings)))) as http:
        page = await http.get("/ui")
        assert page.status == 200 and page.content_type == "text/html"
        html = await page.text()
        csp = page.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
        assert page.headers["X-Frame-Options"] == "DENY"
        assert page.headers["Referrer-Policy"] == "no-referrer"
        assert page.headers["X-Content-Type-Options"] == "nosniff"
        # Nothing inline the policy would have to allow.
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []
        assert not re.search(r"\son[a-z]+=|\sstyle=|<style", html)
        script = await http.get("/ui/console.js")
        assert script.status == 200 and script.content_type == "application/javascript"
        assert script.headers["X-Content-Type-Options"] == "nosniff"
        styles = await http.get("/ui/console.css")
        assert styles.status == 200 and styles.content_type == "text/css"
        for missing in ("/ui/nope.js", "/ui/..%2Froutes.py", "/ui/index.html%00"):
            answer = await http.get(missing)
            assert answer.status == 404
            assert (await answer.json())["error"]["code"] == "not_found"


def test_the_console_calls_only_routes_that_exist() -> None:
    from hodei.api.routes import ROUTES

    script = (ROOT / "api" / "console" / "console.js").read_text()
    called = set()
    for raw in re.findall(r"[`\"](/v1/[^`\"?]*)", script):
        # `/v1/invocations/${encodeURIComponent(id)}/logs` -> /v1/invocations/{}/logs
        called.add(re.sub(r"\$\{[^}]*\}", "{}", raw))
    routes = {re.sub(r"\{[^}]+\}", "{}", r.path) for r in ROUTES}
    assert called - routes == set()
    assert {"/v1/workers", "/v1/queue", "/v1/invocations", "/v1/functions", "/v1/whoami"} <= called
    assert {
        "/v1/invocations/{}/logs",
        "/v1/workers/{}/drain",
        "/v1/invocations/{}/replay",
    } <= called


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    require(
        "chromium with chromedriver and selenium", bool(CHROMIUM and CHROMEDRIVER and webdriver)
    )
    assert CHROMIUM and CHROMEDRIVER
    options = Options()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1400,1000",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: WebDriver, what: str, check: Any, within: float = 30) -> Any:
    # The console re-renders while polling: an element found a moment ago may be gone.
    return WebDriverWait(
        driver, within, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    ).until(lambda d: check(d), message=f"the console never showed {what}")


def _text(driver: WebDriver, css: str) -> str:
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return " ".join(f.text for f in found)


def _visible_buttons(driver: WebDriver) -> list[str]:
    return [
        b.text for b in driver.find_elements(By.CSS_SELECTOR, "main button") if b.is_displayed()
    ]


async def test_the_console_in_a_real_browser(
    settings: ServerSettings,
    plane: ControlPlane,
    agents: list[AgentProcess],
    browser: WebDriver,
) -> None:
    app = create_app(gateway_settings(settings, api_tokens=TOKENS))
    async with TestClient(TestServer(app)) as http:
        url = str(http.make_url("")).rstrip("/")
        await start_agent(plane, agents, "w1")
        client = HodeiClient(url, token="boss", timeout=30)
        await asyncio.to_thread(
            client.deploy,
            "talk",
            {"command": ["sh", "-c", "echo 'hello from the log' >&2; echo done"]},
        )
        await asyncio.to_thread(client.deploy, "nap", {"command": ["sleep", "60"]})
        talked = (await asyncio.to_thread(client.invoke, "talk")).invocation_id
        stuck = {"command": ["true"], "labels": {"zone": "nowhere"}}
        await asyncio.to_thread(client.deploy, "stuck", stuck)
        parked = (await asyncio.to_thread(client.invoke, "stuck", asynchronous=True)).invocation_id
        napping = [
            (await asyncio.to_thread(client.invoke, "nap", asynchronous=True)).invocation_id
            for _ in range(2)
        ]
        await wait_for(lambda: _running(plane, napping), 15)

        await wait_for(lambda: _parked(plane, parked), 15)
        await asyncio.to_thread(_as_admin, browser, url, talked, napping[0], parked)
        record = await plane.data.invocations.get(napping[0])
        assert str(record.status) == "cancelled"
        await asyncio.to_thread(_read_only, browser, url, talked, napping[1])
        assert str((await plane.data.invocations.get(napping[1])).status) == "running"
        await asyncio.to_thread(_drain, browser, url)
        worker = await plane.data.workers.get("w1")
        assert worker is not None and worker.state == "draining"


async def _parked(plane: ControlPlane, invocation_id: str) -> bool:
    return (await plane.data.invocations.get(invocation_id)).parked


async def _running(plane: ControlPlane, ids: list[str]) -> bool:
    return all([str((await plane.data.invocations.get(i)).status) == "running" for i in ids])


def _as_admin(driver: WebDriver, url: str, talked: str, napping: str, parked: str) -> None:
    driver.get(f"{url}/ui?token=boss")
    # The token leaves the address bar (and the history) at once.
    _wait(driver, "an address without the token", lambda d: "token" not in d.current_url)
    assert driver.execute_script("return sessionStorage.getItem('hodei-token')") == "boss"
    _wait(driver, "the worker", lambda d: "w1" in _text(d, "table.workers tbody"))
    _wait(driver, "the utilisation in numbers", lambda d: "m ·" in _text(d, "table.workers .meter"))
    _wait(driver, "an invocation", lambda d: talked in _text(d, "table.invocations tbody"))
    _wait(driver, "the running ones", lambda d: napping in _text(d, "table.invocations tbody"))
    # Parked work says so, with its reason, in the queue and in the list.
    _wait(driver, "the parked one", lambda d: parked in _text(d, "main table tbody"))
    assert "parked: " in _text(driver, "main table tbody td.parked")
    assert "zone" in _text(driver, "main table tbody td.parked")
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / "console-overview.png"))

    driver.find_element(By.LINK_TEXT, talked).click()
    _wait(driver, "the log line", lambda d: "hello from the log" in _text(d, "pre.logs"))
    _wait(driver, "the result", lambda d: "done" in _text(d, "pre.result"))
    assert "succeeded" in _text(driver, "table.record")
    driver.save_screenshot(str(ARTIFACTS / "console-invocation.png"))

    driver.get(f"{url}/ui#/invocations?function=nap")
    _wait(driver, "the filtered list", lambda d: napping in _text(d, "table.invocations tbody"))
    assert talked not in _text(driver, "table.invocations tbody")
    driver.find_element(By.LINK_TEXT, napping).click()
    _click(driver, "Cancel")
    _wait(driver, "the cancelled status", lambda d: "cancelled" in _text(d, "table.record"))

    # Paging: two at a time, then the older ones.
    driver.get(f"{url}/ui#/invocations?limit=2")
    _wait(driver, "the first page", lambda d: _rows(d) == 2)
    driver.find_element(By.XPATH, "//button[text()='Older invocations']").click()
    _wait(driver, "the next page", lambda d: _rows(d) == 4)
    assert talked in _text(driver, "table.invocations tbody")

    driver.get(f"{url}/ui#/functions")
    _wait(driver, "the function list", lambda d: "nap" in _text(d, "table.functions tbody"))
    _wait(driver, "recent invocations per function", lambda d: "cancelled" in _text(d, ".chips"))


def _rows(driver: WebDriver) -> int:
    return len(driver.find_elements(By.CSS_SELECTOR, "table.invocations tbody tr"))


def _click(driver: WebDriver, label: str) -> None:
    """Click the button once it shows; found and clicked in one look, since a re-render in
    between leaves a stale element (retried)."""

    def clicked(d: WebDriver) -> bool:
        for button in d.find_elements(By.CSS_SELECTOR, "main button"):
            if button.text == label and button.is_displayed():
                button.click()
                return True
        return False

    _wait(driver, f"the {label} button", clicked)


def _read_only(driver: WebDriver, url: str, talked: str, napping: str) -> None:
    driver.get(f"{url}/ui?token=viewer")
    _wait(driver, "an address without the token", lambda d: "token" not in d.current_url)
    _wait(driver, "the read-only note", lambda d: "read-only" in _text(d, "#who"))
    _wait(driver, "the worker", lambda d: "w1" in _text(d, "table.workers tbody"))
    _wait(driver, "the invocations", lambda d: napping in _text(d, "table.invocations tbody"))
    driver.find_element(By.LINK_TEXT, napping).click()
    _wait(driver, "the running record", lambda d: "running" in _text(d, "table.record"))
    assert _visible_buttons(driver) == []
    driver.get(f"{url}/ui#/invocations/{talked}")
    _wait(driver, "the log line", lambda d: "hello from the log" in _text(d, "pre.logs"))
    assert _visible_buttons(driver) == []
    driver.get(f"{url}/ui#/workers/w1")
    _wait(driver, "the worker's record", lambda d: "running" in _text(d, "table.record"))
    _wait(driver, "its running invocation", lambda d: napping in _text(d, "table.invocations"))
    assert _visible_buttons(driver) == []


def _drain(driver: WebDriver, url: str) -> None:
    driver.get(f"{url}/ui?token=boss#/workers/w1")
    _wait(
        driver,
        "the worker",
        lambda d: "available" in _text(d, "table.record") or "running" in _text(d, "table.record"),
    )
    _wait(driver, "its running invocation", lambda d: "nap" in _text(d, "table.invocations tbody"))
    driver.save_screenshot(str(ARTIFACTS / "console-worker.png"))
    _click(driver, "Drain")
    _wait(driver, "the drained state", lambda d: "draining" in _text(d, "table.record"))
