"""The `seatcast` terminal tool: token minting, watching through real gateways, booking.

`watch` and `book` run as real `python -m shared.toolbox.cli` processes against real
`python -m booking_api` / `python -m gateway` processes on PostgreSQL and Redis.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from shared.backoff import full_jitter
from shared.settings import JwtKeys
from shared.tokens import TokenVerifier, mint_token
from shared.toolbox.cli import main
from shared.toolbox.watcher import SeqTracker, is_auth_failure
from tests.conftest import JWT_SECRET
from tests.support.ports import free_port
from tests.support.postgres import PostgresServer
from tests.support.processes import ServiceProcess
from tests.support.stack import Services, shared_services
from tests.support.streams import Streamed, cli_env, run_cli

Service = Callable[..., ServiceProcess]


# ---------------- token ----------------


def test_token_mints_a_token_the_services_accept(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`seatcast token --sub 10 --ttl 600` prints a user token for sub 10 expiring in 600 s."""
    monkeypatch.setenv("JWT_SECRET", JWT_SECRET)
    with pytest.raises(SystemExit) as exit_info:
        main(["token", "--sub", "10", "--ttl", "600"])
    assert exit_info.value.code == 0
    claims = TokenVerifier(JwtKeys(JWT_SECRET, None)).verify(capsys.readouterr().out.strip())
    assert (claims.user_id, claims.is_admin) == (10, False)
    assert claims.expires_at is not None
    remaining = claims.expires_at - datetime.now(UTC)
    assert timedelta(seconds=590) < remaining <= timedelta(seconds=600)


def test_token_admin_without_expiry(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--admin --ttl 0` mints an admin token that never expires."""
    monkeypatch.setenv("JWT_SECRET", JWT_SECRET)
    with pytest.raises(SystemExit):
        main(["token", "--sub", "1", "--admin", "--ttl", "0"])
    claims = TokenVerifier(JwtKeys(JWT_SECRET, None)).verify(capsys.readouterr().out.strip())
    assert (claims.user_id, claims.is_admin, claims.expires_at) == (1, True, None)


@pytest.mark.parametrize(
    ("secret", "expected"), [(None, "JWT_SECRET is not set"), ("short", "at least 32 bytes")]
)
def test_token_refuses_a_missing_or_short_secret(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    secret: str | None,
    expected: str,
) -> None:
    """Without a usable JWT_SECRET: one line naming it on stderr, exit 2, nothing on stdout."""
    monkeypatch.delenv("JWT_SECRET", raising=False)
    if secret is not None:
        monkeypatch.setenv("JWT_SECRET", secret)
    with pytest.raises(SystemExit) as exit_info:
        main(["token", "--sub", "10"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert out == ""
    assert err.startswith("seatcast: ")
    assert expected in err
    assert err.count("\n") == 1


def test_token_refuses_a_bad_sub(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user id that is not a positive integer is a usage error (exit 2)."""
    monkeypatch.setenv("JWT_SECRET", JWT_SECRET)
    with pytest.raises(SystemExit) as exit_info:
        main(["token", "--sub", "ten"])
    assert exit_info.value.code == 2
    assert "positive integer" in capsys.readouterr().err


# ---------------- watch logic (no I/O) ----------------


def test_full_jitter_stays_under_the_capped_exponential() -> None:
    """Delays are rand * min(cap, initial * 2^attempt)."""
    assert [full_jitter(n, 0.5, 15, lambda: 1.0) for n in range(7)] == [0.5, 1, 2, 4, 8, 15, 15]
    assert full_jitter(3, 0.5, 15, lambda: 0.25) == 1.0


def test_seq_tracker_resumes_and_drops_duplicates() -> None:
    """Resubscriptions carry since = last seq; seen or unwatched changes are dropped."""
    seqs = SeqTracker((7,), since=None)
    assert seqs.subscribe_message(7) == {"type": "subscribe_event", "eventId": 7, "mode": "add"}
    seqs.on_subscribed({"type": "subscribed", "eventId": 7, "seq": 4})
    accepted = [s for s in (4, 5, 6, 6, 5, 7) if seqs.accept({"eventId": 7, "seq": s})]
    assert accepted == [5, 6, 7]
    assert not seqs.accept({"eventId": 8, "seq": 1})
    assert seqs.subscribe_message(7)["since"] == 7
    seqs.on_subscribed({"type": "subscribed", "eventId": 7, "seq": 9, "recovered": True})
    assert seqs.accept({"eventId": 7, "seq": 8}), "a replay follows a recovered subscription"
    seqs.subscribe_message(7)
    seqs.on_subscribed({"type": "subscribed", "eventId": 7, "seq": 20, "recovered": False})
    assert not seqs.accept({"eventId": 7, "seq": 19})
    assert seqs.accept({"eventId": 7, "seq": 21})


def test_only_token_closes_count_as_refusals() -> None:
    """1008 for a bad token stops `watch`; 1008 for flooding and other codes do not."""
    assert is_auth_failure(1008, "Invalid authentication token")
    assert is_auth_failure(1008, "Authentication token required")
    assert not is_auth_failure(1008, "Too many messages")
    assert not is_auth_failure(1012, "token")


# ---------------- against real services ----------------


def create_event(api: ServiceProcess, capacity: int = 50) -> int:
    admin = mint_token(JWT_SECRET, 1, admin=True)
    response = httpx.post(
        f"{api.http_url}/api/events",
        json={"name": "CLI test", "capacity": capacity},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def book(api: ServiceProcess, event_id: int, user_id: int = 10, seats: int = 1) -> dict[str, Any]:
    response = httpx.post(
        f"{api.http_url}/api/bookings",
        json={"eventId": event_id, "seats": seats},
        headers={"Authorization": f"Bearer {mint_token(JWT_SECRET, user_id)}"},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def start_watch(*args: str) -> Streamed:
    argv = [sys.executable, "-m", "shared.toolbox.cli", "watch", *args]
    return Streamed(argv, cli_env({"JWT_SECRET": JWT_SECRET}))


def messages(watch: Streamed) -> list[dict[str, Any]]:
    return [json.loads(line) for line in list(watch.stdout)]


def change_seqs(watch: Streamed) -> list[int]:
    return [
        m["seq"] for m in messages(watch) if m["type"] in ("booking_created", "booking_cancelled")
    ]


def has_seq(seq: int) -> Callable[[str], bool]:
    return lambda line: json.loads(line).get("seq") == seq and "booking_" in line


@pytest.fixture(scope="module")
def services(postgres_server: PostgresServer) -> Iterator[Services]:
    """One API and gateway for the tests that stop neither; each test makes its own event."""
    with shared_services(postgres_server) as running:
        yield running


@pytest.fixture
def api(services: Services) -> ServiceProcess:
    return services.api


@pytest.fixture
def gateway(services: Services) -> ServiceProcess:
    return services.gateways[0]


def test_watch_prints_replayed_then_live_messages(
    api: ServiceProcess, gateway: ServiceProcess
) -> None:
    """`watch --since 0` prints the history, then live changes, each as one JSON line."""
    event_id = create_event(api)
    book(api, event_id)
    book(api, event_id, seats=2)
    watch = start_watch("--event", str(event_id), "--since", "0", "--url", gateway.ws_url)
    try:
        watch.wait_for(has_seq(2), 30, "the replayed seq 2")
        cancelled = httpx.delete(
            f"{api.http_url}/api/bookings/{book(api, event_id)['bookingId']}",
            headers={"Authorization": f"Bearer {mint_token(JWT_SECRET, 10)}"},
            timeout=10,
        )
        assert cancelled.status_code == 200
        watch.wait_for(has_seq(4), 15, "the live cancellation")
        kinds = [m["type"] for m in messages(watch)]
        assert kinds[:2] == ["connection_established", "subscribed"]
        assert change_seqs(watch) == [1, 2, 3, 4]
        last = messages(watch)[-1]
        assert (last["type"], last["eventId"], last["availableSeats"]) == (
            "booking_cancelled",
            event_id,
            47,
        )
        assert any("connected to " + gateway.ws_url in line for line in watch.stderr)
    finally:
        watch.close()


def test_watch_fails_over_and_misses_nothing(
    service: Service, database_url: str, redis_url: str
) -> None:
    """When its replica stops, `watch` resumes on the other with since: every seq once, in order."""
    first = service("gateway", {"REDIS_URL": redis_url, "DRAIN_SECONDS": "0.5"})
    second = service("gateway", {"REDIS_URL": redis_url})
    api = service("booking_api", {"DATABASE_URL": database_url, "REDIS_URL": redis_url})
    event_id = create_event(api, capacity=100)
    watch = start_watch("--event", str(event_id), "--url", f"{first.ws_url},{second.ws_url}")
    try:
        watch.wait_for(lambda line: '"subscribed"' in line, 30, "the subscription")
        book(api, event_id)
        watch.wait_for(has_seq(1), 15, "seq 1 through the first replica")
        first.signal(signal.SIGTERM)
        booked = 1
        # Bookings keep coming while the replica drains and the watcher moves.
        while (
            not any("connected to " + second.ws_url in line for line in watch.stderr)
            and booked < 40
        ):
            book(api, event_id)
            booked += 1
        for _ in range(3):
            book(api, event_id)
            booked += 1
        watch.wait_for(has_seq(booked), 30, f"seq {booked} after the failover")
        assert change_seqs(watch) == list(range(1, booked + 1))
        assert first.wait(15) == 0
    finally:
        watch.close()


def test_watch_stops_on_a_refused_token(gateway: ServiceProcess) -> None:
    """A token the gateway refuses (1008) ends `watch` with one line and exit 1, no retrying."""
    forged = mint_token("another-secret-that-is-long-enough-too!!", 10)
    result = run_cli("watch", "--event", "1", "--url", gateway.ws_url, "--token", forged, "--quiet")
    assert result.returncode == 1
    assert result.stderr.startswith("seatcast: ")
    assert result.stderr.count("\n") == 1
    assert "refused the token" in result.stderr
    assert "1008" in result.stderr


def test_watch_reports_a_dead_server() -> None:
    """Nothing listening: `watch` says connection refused and exits 1."""
    url = f"ws://127.0.0.1:{free_port()}"
    result = run_cli("watch", "--event", "1", "--url", url, "--token", "x", "--quiet")
    assert result.returncode == 1
    assert (
        result.stderr
        == f"seatcast: cannot connect to {url}: connection refused (is the gateway running?)\n"
    )


def test_watch_reports_a_wrong_url(api: ServiceProcess) -> None:
    """An http:// URL is a usage error; an HTTP server without /ws is named as not a gateway."""
    result = run_cli("watch", "--event", "1", "--url", "http://127.0.0.1:8001", "--token", "x")
    assert result.returncode == 2
    assert "--url must look like ws://" in result.stderr
    result = run_cli("watch", "--event", "1", "--url", api.ws_url, "--token", "x", "--quiet")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "no WebSocket endpoint at " + api.ws_url + "/ws (HTTP 403)" in result.stderr
    assert "seatcast gateway" in result.stderr


def test_book_books_through_the_api(api: ServiceProcess) -> None:
    """`seatcast book` prints the booking and the seats are taken."""
    event_id = create_event(api, capacity=5)
    result = run_cli(
        "book",
        "--event",
        str(event_id),
        "--seats",
        "2",
        "--api",
        api.http_url,
        env={"JWT_SECRET": JWT_SECRET},
    )
    assert result.returncode == 0, result.stderr
    booking = json.loads(result.stdout)
    assert (booking["eventId"], booking["userId"], booking["seats"], booking["status"]) == (
        event_id,
        10,
        2,
        "confirmed",
    )
    event = httpx.get(f"{api.http_url}/api/events/{event_id}", timeout=10).json()
    assert event["availableSeats"] == 3


def test_book_reports_refusals(api: ServiceProcess) -> None:
    """An API error is one line with its code (exit 1); so is an API that is not running."""
    token = mint_token(JWT_SECRET, 10)
    result = run_cli("book", "--event", "999999", "--api", api.http_url, "--token", token)
    assert result.returncode == 1
    assert result.stderr.startswith("seatcast: booking refused: ")
    assert "not_found" in result.stderr
    dead = f"http://127.0.0.1:{free_port()}"
    result = run_cli("book", "--event", "1", "--api", dead, "--token", token)
    assert result.returncode == 1
    assert (
        result.stderr
        == f"seatcast: booking API: cannot reach {dead}: connection refused (is it running?)\n"
    )
    result = run_cli("book", "--event", "1", "--api", api.http_url)
    assert result.returncode == 2
    assert "no token" in result.stderr
