"""The per-connection rate limit: at most N client messages in any one second."""

from __future__ import annotations

from gateway.session.limits import RateLimit


def test_rate_limit_allows_n_per_second() -> None:
    """N messages within one second pass, the N+1th is refused; a second later all is well."""
    limit = RateLimit(3)
    assert [limit.allow(t) for t in (0.0, 0.1, 0.2)] == [True, True, True]
    assert limit.allow(0.9) is False
    assert limit.allow(1.05) is True
    assert limit.allow(1.11) is True


def test_rate_limit_is_a_sliding_window() -> None:
    """A burst across a second boundary is still caught (no fixed windows)."""
    limit = RateLimit(2)
    assert limit.allow(0.95)
    assert limit.allow(0.99)
    assert limit.allow(1.01) is False
