"""The browser client's logic (gateway/static/client.js) under a fake clock and socket.

Each test runs one scenario of tests/unit/gateway/js/client_scenarios.js in Node, where
timers and the WebSocket are fakes, so backoff, heartbeat and token refresh
are checked exactly. tests/e2e/test_browser.py drives the same file in Chromium
against real replicas.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support.binaries import needs_binary

SCENARIOS = Path(__file__).parent / "js" / "client_scenarios.js"
NODE = shutil.which("node")

pytestmark = needs_binary("node", "apt-get install nodejs")


def run_scenario(name: str) -> None:
    assert NODE is not None
    result = subprocess.run(
        [NODE, str(SCENARIOS), name], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, f"scenario {name} failed:\n{result.stderr}"


def test_backoff_is_full_jitter_and_capped() -> None:
    """Delays are random in [0, min(max, initial * 2^n)], and attempts alternate replicas."""
    run_scenario("backoff_is_full_jitter_and_capped")


def test_subscribes_every_event_with_mode_add() -> None:
    """Several events are watched at once with `mode: "add"`; unsubscribe sends unsubscribe_event."""
    run_scenario("subscribes_every_event_with_mode_add")


def test_resubscribes_with_since_on_another_replica() -> None:
    """After a 1012 close the client moves to the next replica and resubscribes with since = last seq."""
    run_scenario("resubscribes_with_since_on_another_replica")


def test_drops_duplicates_by_seq_across_a_replay() -> None:
    """Handlers see each seq once, in order, even when a replay overlaps what was delivered."""
    run_scenario("drops_duplicates_by_seq_across_a_replay")


def test_trusts_subscribed_when_history_was_lost() -> None:
    """`recovered: false` moves the last seq to the subscribed message's seq."""
    run_scenario("trusts_subscribed_when_history_was_lost")


def test_stops_on_a_refused_static_token() -> None:
    """A 1008 authentication close with a fixed token ends in state closed, without retrying."""
    run_scenario("stops_on_a_refused_static_token")


def test_reconnects_after_1008_when_get_token_gives_a_new_token() -> None:
    """getToken is asked after a 1008; a new token reconnects, the same token stops."""
    run_scenario("reconnects_after_1008_when_get_token_gives_a_new_token")


def test_reconnects_after_a_rate_limit_close() -> None:
    """A 1008 that is not about the token (too many messages) is retried."""
    run_scenario("reconnects_after_a_rate_limit_close")


def test_heartbeat_detects_a_dead_connection() -> None:
    """Pings go out every interval; a missing pong abandons the socket and reconnects."""
    run_scenario("heartbeat_detects_a_dead_connection")


def test_gives_up_on_a_silent_handshake() -> None:
    """No connection_established within the connect timeout counts as a failed attempt."""
    run_scenario("gives_up_on_a_silent_handshake")


def test_refreshes_the_token_before_it_expires() -> None:
    """refresh_token is sent refreshMarginMs before exp, and getToken runs for each new connection."""
    run_scenario("refreshes_the_token_before_it_expires")


def test_reports_connection_states() -> None:
    """State events go connecting, connected (replica, clientId), reconnecting, connected, closed."""
    run_scenario("reports_connection_states")


def test_a_throwing_handler_does_not_stop_delivery() -> None:
    """An exception in one handler is reported and the next messages still arrive."""
    run_scenario("a_throwing_handler_does_not_stop_delivery")
