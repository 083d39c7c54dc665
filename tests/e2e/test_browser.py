"""The demo page and /client.js in a real browser (Playwright driving Debian's Chromium).

Real gateway replicas, a real booking API, PostgreSQL and Redis; the pages are
the ones the gateways serve. A screenshot of the demo page is kept in
test-artifacts/demo.png.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from shared.tokens import mint_token
from tests.conftest import JWT_SECRET
from tests.support.binaries import needs_binary
from tests.support.postgres import PostgresServer
from tests.support.processes import ROOT, ServiceProcess
from tests.support.stack import Services, shared_services, start_services

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed"
)
pytestmark = needs_binary(CHROMIUM, "apt-get install chromium")


@dataclass
class Stack:
    api: ServiceProcess
    gateways: list[ServiceProcess]
    event_id: int

    def page_url(self, gateway: int, user_id: int) -> str:
        others = ",".join(g.ws_url for i, g in enumerate(self.gateways) if i != gateway)
        query = {
            "token": mint_token(JWT_SECRET, user_id),
            "api": self.api.http_url,
            "gateways": others,
            "event": self.event_id,
        }
        return f"{self.gateways[gateway].http_url}/?{urlencode(query)}"

    def book(self, user_id: int, seats: int = 1) -> dict[str, Any]:
        response = httpx.post(
            f"{self.api.http_url}/api/bookings",
            json={"eventId": self.event_id, "seats": seats},
            headers={"Authorization": f"Bearer {mint_token(JWT_SECRET, user_id)}"},
            timeout=10,
        )
        assert response.status_code == 201, response.text
        return dict(response.json())


# The first replica drains fast: the failover test stops it.
GATEWAY_ENVS: tuple[dict[str, str], ...] = ({"DRAIN_SECONDS": "0.5"}, {})


def with_new_event(services: Services) -> Stack:
    created = httpx.post(
        f"{services.api.http_url}/api/events",
        json={"name": "Aurora Festival · Opening Night", "capacity": 200},
        headers={"Authorization": f"Bearer {mint_token(JWT_SECRET, 1, admin=True)}"},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    return Stack(services.api, services.gateways, int(created.json()["id"]))


@pytest.fixture(scope="module")
def services(postgres_server: PostgresServer) -> Iterator[Services]:
    """One stack for the tests that stop nothing; each test books on an event of its own."""
    with shared_services(postgres_server, GATEWAY_ENVS) as running:
        yield running


@pytest.fixture
def stack(services: Services) -> Stack:
    return with_new_event(services)


@pytest.fixture
def own_stack(database_url: str, redis_url: str) -> Iterator[Stack]:
    """A stack of its own, for a test that stops one of its replicas."""
    started: list[ServiceProcess] = []
    try:
        yield with_new_event(start_services(database_url, redis_url, started, GATEWAY_ENVS))
    finally:
        for process in started:
            process.close()


@pytest.fixture
def context() -> Iterator[Any]:
    """A fresh browser with one profile, started after the stack (list it after the stack).

    Playwright's sync API keeps an event loop running on this thread while it
    is open, and the database fixtures use asyncio.run: so the browser starts
    after them and closes before they are torn down.
    """
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        ctx = browser.new_context(viewport={"width": 1360, "height": 860})
        yield ctx
        ctx.close()
        browser.close()


def open_page(context: Any, url: str) -> Any:
    page = context.new_page()
    page.goto(url)
    return page


def host_of(service: ServiceProcess) -> str:
    return f"127.0.0.1:{service.port}"


def expect_connected(page: Any, replica: ServiceProcess, timeout_ms: float = 15000) -> None:
    sync_api.expect(page.locator("#connection")).to_have_attribute(
        "data-state", "connected", timeout=timeout_ms
    )
    sync_api.expect(page.locator("#connection")).to_have_attribute(
        "data-replica", host_of(replica), timeout=timeout_ms
    )


def note_when_count_is(page: Any, text: str) -> None:
    """Record in window.countShownAt the moment the seat count first reads `text`."""
    page.evaluate(
        """(text) => {
        const count = document.querySelector('#seat-count');
        new MutationObserver((_, observer) => {
            if (count.textContent !== text) return;
            window.countShownAt = performance.timeOrigin + performance.now();
            observer.disconnect();
        }).observe(count, {childList: true, characterData: true, subtree: true});
    }""",
        text,
    )


def feed_seqs(page: Any) -> list[int]:
    return list(
        page.eval_on_selector_all(
            "#feed li[data-seq]", "items => items.map(i => Number(i.dataset.seq))"
        )
    )


def test_a_booking_clicked_in_one_page_updates_both_replicas_within_a_second(
    stack: Stack, context: Any
) -> None:
    """Pages on two replicas show the same count; a click on Book in one changes both within 1 s."""
    first = open_page(context, stack.page_url(0, user_id=10))
    second = open_page(context, stack.page_url(1, user_id=11))
    expect_connected(first, stack.gateways[0])
    expect_connected(second, stack.gateways[1])
    for page, replica in zip((first, second), stack.gateways, strict=True):
        sync_api.expect(page.locator("#seat-count")).to_have_text("200")
        sync_api.expect(page.locator("#connection-text")).to_have_text(
            f"Live · via {host_of(replica)}"
        )
    assert "token=" not in first.url, "the page takes the token out of the address bar"

    first.click("#seats-plus")
    # Timed inside the browser, from the click event to each page showing 198: Playwright's
    # own actionability checks before a click are not the product's latency.
    for page in (first, second):
        note_when_count_is(page, "198")
    first.evaluate("""() => document.querySelector('#book').addEventListener('click',
        () => { window.clickedAt = performance.timeOrigin + performance.now(); }, {once: true})""")
    first.click("#book")
    for page in (first, second):
        sync_api.expect(page.locator("#seat-count")).to_have_text("198", timeout=5000)
    clicked = first.evaluate("window.clickedAt")
    delays = [page.evaluate("window.countShownAt") - clicked for page in (first, second)]
    assert max(delays) < 1000, f"the pages showed the booking {delays} ms after the click"

    sync_api.expect(first.locator("#feed li").first).to_contain_text("You booked 2 seats")
    sync_api.expect(second.locator("#feed li").first).to_contain_text("User 10 booked 2 seats")
    sync_api.expect(first.locator("#my-bookings li")).to_have_count(1)
    sync_api.expect(first.locator("#notice")).to_contain_text("Booked 2 seats")

    # Cancel from the page: the seats come back everywhere.
    first.click("#my-bookings button[data-cancel]")
    for page in (first, second):
        sync_api.expect(page.locator("#seat-count")).to_have_text("200", timeout=5000)
    sync_api.expect(second.locator("#feed li").first).to_contain_text("User 10 cancelled 2 seats")
    assert feed_seqs(first) == feed_seqs(second) == [2, 1]

    for user_id, seats in ((12, 3), (14, 1), (10, 4), (21, 2)):
        stack.book(user_id, seats)
    sync_api.expect(first.locator("#seat-count")).to_have_text("190", timeout=5000)
    ARTIFACTS.mkdir(exist_ok=True)
    # Finish the feed's entry animation, or fresh entries are captured transparent.
    first.screenshot(path=str(ARTIFACTS / "demo.png"), animations="disabled")


def test_a_page_whose_replica_stops_fails_over_and_misses_nothing(
    own_stack: Stack, context: Any
) -> None:
    """SIGTERM to a page's replica: it shows reconnecting, comes back via the other replica and
    shows every booking made meanwhile exactly once."""
    stack = own_stack
    page = open_page(context, stack.page_url(0, user_id=10))
    sent: list[tuple[str, str]] = []
    page.on(
        "websocket",
        lambda ws: ws.on("framesent", lambda payload: sent.append((ws.url, str(payload)))),
    )
    expect_connected(page, stack.gateways[0])
    stack.book(30)
    sync_api.expect(page.locator("#seat-count")).to_have_text("199", timeout=5000)
    # Record every state the indicator shows from now on.
    page.evaluate("""() => {
        window.shownStates = [];
        new MutationObserver(() => window.shownStates.push(document.querySelector('#connection').dataset.state))
            .observe(document.querySelector('#connection'), {attributes: true, attributeFilter: ['data-state']});
    }""")

    stack.gateways[0].signal(signal.SIGTERM)
    booked = 1
    while (
        page.locator("#connection").get_attribute("data-replica") != host_of(stack.gateways[1])
        and booked < 40
    ):
        stack.book(31)
        booked += 1
    for _ in range(3):
        stack.book(32)
        booked += 1

    expect_connected(page, stack.gateways[1])
    sync_api.expect(page.locator("#seat-count")).to_have_text(str(200 - booked), timeout=10000)
    sync_api.expect(page.locator(f"#feed li[data-seq='{booked}']")).to_have_count(1, timeout=10000)
    assert sorted(feed_seqs(page)) == list(range(1, booked + 1)), "every booking once"
    assert "reconnecting" in page.evaluate("window.shownStates")
    resubscriptions = [
        json.loads(text) for url, text in sent if url.startswith(stack.gateways[1].ws_url)
    ]
    assert any(
        m.get("type") == "subscribe_event" and m.get("since", 0) >= 1 for m in resubscriptions
    ), "the page resumed with since on the second replica"
    assert stack.gateways[0].wait(15) == 0


def test_client_js_works_as_an_es_module(stack: Stack, context: Any) -> None:
    """`import "/client.js"` in a module script defines Seatcast; the client subscribes and receives."""
    gateway = stack.gateways[1]
    # The gateway's own page (no token: it stays offline) is a same-origin home for the module.
    page = open_page(context, f"{gateway.http_url}/?api={stack.api.http_url}")
    sync_api.expect(page.locator("#signin-card")).to_be_visible()
    page.evaluate("delete globalThis.Seatcast")
    token = mint_token(JWT_SECRET, 40)
    page.add_script_tag(
        type="module",
        content=f"""
        import "/client.js?as-module";
        const client = new globalThis.Seatcast.Client({{token: "{token}", events: [{stack.event_id}]}});
        window.received = [];
        client.on("subscribed", (m) => {{ window.subscribed = m; }});
        client.on("booking_created", (m) => window.received.push(m.seq));
        client.connect();
        """,
    )
    page.wait_for_function(f"window.subscribed && window.subscribed.eventId === {stack.event_id}")
    stack.book(41)
    page.wait_for_function("window.received.length === 1")
    assert page.evaluate("window.received") == [1]
    # A dynamic import works the same way.
    assert (
        page.evaluate(
            "async () => { delete globalThis.Seatcast; await import('/client.js?lazy'); return typeof Seatcast.Client; }"
        )
        == "function"
    )


def test_the_page_asks_for_a_token_and_uses_the_one_typed_in(stack: Stack, context: Any) -> None:
    """Without a token the page shows the sign-in card; a pasted token connects it."""
    query = urlencode({"api": stack.api.http_url, "event": stack.event_id})
    page = open_page(context, f"{stack.gateways[0].http_url}/?{query}")
    sync_api.expect(page.locator("#signin-card")).to_be_visible()
    sync_api.expect(page.locator("#book")).to_be_disabled()
    sync_api.expect(page.locator("#event-name")).to_have_text("Aurora Festival · Opening Night")
    page.fill("#token-input", mint_token(JWT_SECRET, 50))
    page.click("#token-form button")
    expect_connected(page, stack.gateways[0])
    sync_api.expect(page.locator("#signin-card")).to_be_hidden()
    sync_api.expect(page.locator("#user")).to_have_text("User 50")


def test_a_refused_token_stops_the_page_and_says_so(stack: Stack, context: Any) -> None:
    """A token the gateway refuses ends in 'token refused' and the sign-in card, not a retry loop."""
    forged = mint_token("another-secret-that-is-long-enough-too!!", 10)
    page = open_page(
        context, f"{stack.gateways[0].http_url}/?token={forged}&api={stack.api.http_url}"
    )
    sync_api.expect(page.locator("#connection")).to_have_attribute(
        "data-state", "closed", timeout=15000
    )
    sync_api.expect(page.locator("#connection-text")).to_have_text("Offline · token refused")
    sync_api.expect(page.locator("#signin-card")).to_be_visible()


def test_the_screenshot_is_kept_out_of_git() -> None:
    """test-artifacts/ is ignored, so screenshots never get committed."""
    assert "test-artifacts/" in Path(ROOT / ".gitignore").read_text().splitlines()
