"""The live status page in a real browser (Debian's chromium, driven by Playwright),
on a real bridge process, and the token rule of state-changing requests over HTTP.

The browser is never downloaded: ``scripts/setup.sh --with-test-servers`` installs
Debian's ``chromium``; without it these tests fail (they do not skip) and say so.
Screenshots (a desktop window and a 400 px one) go to the test's tmp_path and are
copied to ``build/screenshots/`` for people to look at.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import nats
import nats.js.errors
import pytest
from nats.js import api

from cdc_bridge.kernel.wire import ORIGINAL_SUBJECT, REASON
from tests.helpers import BridgeProcess, add_rows, wait_for, write_config
from tests.services.nats_server import NatsServer
from tests.services.ports import free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "build" / "screenshots"
NATS_PASSWORD = "s3cret-nats-pw"
HTTP_TOKEN = "tok-0123456789-abcdef-secret"
T = TypeVar("T")


# -- helpers ----------------------------------------------------------------------------


def request(url: str, method: str = "GET", body: dict[str, Any] | None = None,
            token: str | None = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def overview(base: str) -> dict[str, Any]:
    status, body = request(base + "/api/overview")
    assert status == 200, (status, body[:300])
    data: dict[str, Any] = json.loads(body)
    return data


def bridge_config(tmp: Path, nats_url: str, db: Path, port: int, host: str,
                  token: str | None, stream: str = "CDC") -> Path:
    http: dict[str, Any] = {"enabled": True, "host": host, "port": port}
    if token is not None:
        http["token"] = "${CDC_HTTP_TOKEN}"
    return write_config(tmp / "bridge.yaml", {
        "state_dir": str(tmp / "state"),
        "nats": {"url": nats_url, "ack_timeout": "3s", "stream": stream,
                 "subject_prefix": stream.lower()},
        "http": http,
        "adapters": [{"name": "erp", "type": "sql_poll", "url": f"sqlite:///{db}",
                      "poll_interval": "100ms", "schema_changes": {"on_breaking": "pause"},
                      "tables": [{"name": "invoices", "incrementing_column": "id"}]}],
    })


def run_async(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine on a loop of its own thread (Playwright's sync API owns this one)."""
    async def go() -> T:
        return await make()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, go()).result(timeout=60)


async def add_durable(url: str, name: str) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().add_consumer("CDC", api.ConsumerConfig(
            durable_name=name, ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL, filter_subject="cdc.erp.>"))
    finally:
        await nc.close()


async def add_dead_letter(url: str) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().publish(
            "cdc_dlq.erp", b'{"raw": "not json"}', stream="CDC_DLQ",
            headers={REASON: "unparsable row: expected 2 columns, found 3",
                     ORIGINAL_SUBJECT: "cdc.erp._.invoices.c"})
    finally:
        await nc.close()


async def has_stream(url: str, name: str) -> bool:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().stream_info(name)
        return True
    except nats.js.errors.NotFoundError:
        return False
    finally:
        await nc.close()


def shown(page: Any, selector: str) -> str | None:
    """The text of the first element matching ``selector``, without waiting."""
    texts = page.locator(selector).all_text_contents()
    return texts[0].strip() if texts else None


def as_int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.replace(",", ""))
    except ValueError:
        return None


def save_screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENSHOTS / name)
    return path


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's chromium under Playwright; fails (not skips) when it is missing."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the status page is tested in a real browser. "
                    "Install Debian's chromium (scripts/setup.sh --with-test-servers); "
                    "browser builds are not downloaded")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


# -- the page ---------------------------------------------------------------------------


def test_status_page_live_in_chromium(tmp_path: Path, nats_server: NatsServer,
                                      browser: Any) -> None:
    db = tmp_path / "legacy.db"
    add_rows(db, 30)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    secret_url = nats_server.url.replace("nats://", f"nats://cdc:{NATS_PASSWORD}@")
    cfg = bridge_config(tmp_path, secret_url, db, port, "127.0.0.1", HTTP_TOKEN)
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log", env={"CDC_HTTP_TOKEN": HTTP_TOKEN})
    bridge.start()
    try:
        wait_for(lambda: request(base + "/readyz")[0] == 200, what="/readyz 200", timeout_s=30)
        # 30 rows and the schema-change event of the table's version 1
        wait_for(lambda: overview(base)["relay"]["published"] == 31, what="31 published",
                 timeout_s=30)
        wait_for(lambda: run_async(lambda: has_stream(nats_server.url, "CDC_DLQ")),
                 what="the dead-letter stream", timeout_s=30)

        page = browser.new_page(viewport={"width": 1280, "height": 900})
        requested: list[str] = []
        page.on("request", lambda r: requested.append(r.url))
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base + "/", wait_until="load")
        assert page.title() == "cdc-bridge status"

        # the adapter, its state and its event count, as the API reports them
        def agrees() -> bool:
            api_erp = overview(base)["adapters"]["erp"]
            return (shown(page, "[data-adapter=erp] [data-field=name]") == "erp"
                    and shown(page, "[data-adapter=erp] [data-field=state]") == api_erp["state"]
                    and as_int(shown(page, "[data-adapter=erp] [data-field=events]"))
                    == api_erp["events"] == 30)

        wait_for(agrees, what="the page showing adapter erp as the API does", timeout_s=15)
        assert shown(page, "[data-field=state]") == "running"
        assert shown(page, "#ready") == "ready"
        assert shown(page, "[data-field=nats-state]") == "connected"

        # live: new rows, a durable consumer, a dead letter, a re-snapshot
        updates = int(page.evaluate("document.body.dataset.updates"))
        add_rows(db, 20)
        run_async(lambda: add_durable(nats_server.url, "billing"))
        run_async(lambda: add_dead_letter(nats_server.url))
        status, body = request(base + "/snapshot", "POST", {"adapter": "erp"}, HTTP_TOKEN)
        assert status == 202, body
        rid = json.loads(body)["id"]

        wait_for(lambda: as_int(shown(page, "[data-adapter=erp] [data-field=events]"))
                 == overview(base)["adapters"]["erp"]["events"] >= 50,
                 what="the displayed event count following the API to 50+", timeout_s=15)
        assert int(page.evaluate("document.body.dataset.updates")) > updates

        def consumer_shown() -> bool:
            consumers = {c["name"]: c for c in overview(base)["jetstream"]["consumers"]}
            pending = as_int(shown(page, "[data-consumer=billing] [data-field=pending]"))
            return ("billing" in consumers and pending is not None and pending > 0
                    and pending == consumers["billing"]["pending"])

        wait_for(consumer_shown, what="consumer billing with the API's pending count",
                 timeout_s=15)
        wait_for(lambda: "expected 2 columns" in (shown(page, "#dead-letters [data-field=reason]")
                                                  or ""),
                 what="the dead letter and its reason", timeout_s=15)
        assert shown(page, "#dead-letters [data-field=subject]") == "cdc_dlq.erp"
        wait_for(lambda: shown(page, f"[data-request='{rid}'] [data-field=status]") == "done",
                 what=f"re-snapshot {rid} shown done", timeout_s=20)
        wait_for(lambda: any(c.isdigit() for c in shown(page, "[data-field=latency]") or ""),
                 what="a publish latency", timeout_s=10)

        # a breaking schema change (a rename) pauses the table: the page says so
        with sqlite3.connect(db) as conn:
            conn.execute("ALTER TABLE invoices RENAME COLUMN amount TO total")
        add_rows(db, 2)
        wait_for(lambda: "2 events held" in (
            shown(page, "[data-adapter=erp] [data-field=paused]") or ""),
            what="the paused table and its held events", timeout_s=20)
        assert "_.invoices v2" in (shown(page, "[data-adapter=erp] [data-field=schemas]") or "")
        assert overview(base)["schemas"]["tables"]["erp"]["_.invoices"]["paused"]

        # no secret anywhere on the page or in its data; nothing from another origin
        html = page.content() + json.dumps(overview(base))
        for secret in (NATS_PASSWORD, HTTP_TOKEN):
            assert secret not in html
        assert "cdc:***@" in (shown(page, "[data-field=servers]") or "")
        foreign = [u for u in requested if not u.startswith(base + "/")]
        assert not foreign, foreign
        assert not errors, errors

        desktop = save_screenshot(page, tmp_path, "status-desktop.png")
        page.set_viewport_size({"width": 400, "height": 860})
        page.wait_for_timeout(300)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 400, f"the page is {width}px wide in a 400px window"
        narrow = save_screenshot(page, tmp_path, "status-400px.png")
        assert desktop.stat().st_size > 10_000 and narrow.stat().st_size > 10_000
        # accepted: the held events flow and the page stops saying "paused"
        status, body = request(base + "/schema/accept", "POST",
                               {"adapter": "erp", "table": "invoices"}, HTTP_TOKEN)
        assert status == 202, body
        def flowing() -> bool:
            table = overview(base)["schemas"]["tables"]["erp"]["_.invoices"]
            return (shown(page, "[data-adapter=erp] [data-field=paused]") is None
                    and not table["paused"] and table["held"] == 0)

        wait_for(flowing, what="the table flowing again", timeout_s=20)
        page.close()
    finally:
        code = bridge.terminate()
    assert code == 0, bridge.log()
    assert NATS_PASSWORD not in bridge.log() and HTTP_TOKEN not in bridge.log()


# -- the token rule ---------------------------------------------------------------------


def test_state_changes_need_the_token(tmp_path: Path, nats_server: NatsServer) -> None:
    """Loopback with a token: POST needs it (401 without, or wrong). Beyond loopback
    without a token: POST is refused (403, naming http.token); reading stays open."""
    db = tmp_path / "legacy.db"
    add_rows(db, 3)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    bridge = BridgeProcess(bridge_config(tmp_path, nats_server.url, db, port, "127.0.0.1",
                                         HTTP_TOKEN), tmp_path / "bridge.log",
                           env={"CDC_HTTP_TOKEN": HTTP_TOKEN})
    bridge.start()
    try:
        wait_for(lambda: request(base + "/readyz")[0] == 200, what="/readyz 200", timeout_s=30)
        snap = {"adapter": "erp"}
        assert request(base + "/snapshot", "POST", snap)[0] == 401
        accept = {"adapter": "erp", "table": "invoices"}
        assert request(base + "/schema/accept", "POST", accept)[0] == 401
        assert request(base + "/snapshot", "POST", snap, token="wrong-token")[0] == 401
        assert request(base + "/snapshot", "POST", snap, token=HTTP_TOKEN)[0] == 202
        for path in ("/", "/api/overview", "/status", "/static/app.js", "/static/app.css"):
            assert request(base + path)[0] == 200, path
        assert request(base + "/static/nope.js")[0] == 404
    finally:
        assert bridge.terminate() == 0, bridge.log()

    (tmp_path / "state2").mkdir()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cfg = bridge_config(tmp_path / "state2", nats_server.url, db, port, "0.0.0.0", None,
                        stream="WIDE")
    bridge = BridgeProcess(cfg, tmp_path / "bridge2.log")
    bridge.start()
    try:
        wait_for(lambda: request(base + "/readyz")[0] == 200, what="/readyz 200 (0.0.0.0)",
                 timeout_s=30)
        status, body = request(base + "/snapshot", "POST", {"adapter": "erp"})
        assert status == 403 and b"http.token" in body, (status, body)
        assert request(base + "/")[0] == 200
        assert request(base + "/api/overview")[0] == 200
        deadline = time.monotonic() + 5
        while "beyond loopback" not in bridge.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "http.token is not set" in bridge.log()
    finally:
        assert bridge.terminate() == 0, bridge.log()
