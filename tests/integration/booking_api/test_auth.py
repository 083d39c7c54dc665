"""The API's token cache: a verified token is reused, but never past its expiry."""

from __future__ import annotations

import pytest

from booking_api.auth import CachingVerifier
from shared.settings import JwtKeys
from shared.tokens import InvalidToken, TokenVerifier, mint_token
from tests.support.wait import wait_until

SECRET = "test-secret-that-is-long-enough-for-hs256!"


def make_verifier(max_entries: int = 100) -> CachingVerifier:
    return CachingVerifier(TokenVerifier(JwtKeys(secret=SECRET, public_key=None)), max_entries)


def refused(verifier: CachingVerifier, token: str) -> bool:
    try:
        verifier.verify(token)
    except InvalidToken:
        return True
    return False


def test_cached_claims_expire_with_the_token() -> None:
    """A token verified (and cached) while valid is refused once its `exp` has passed."""
    verifier = make_verifier()
    token = mint_token(SECRET, 5, ttl_seconds=2)  # `exp` is whole seconds: valid >= 1 s
    assert verifier.verify(token).user_id == 5
    wait_until(lambda: refused(verifier, token), timeout=10, what="the cached token to expire")


def test_bad_tokens_are_not_cached() -> None:
    """A token signed with another key is refused every time."""
    verifier = make_verifier()
    forged = mint_token("another-secret-that-is-long-enough-!!", 5, admin=True)
    assert refused(verifier, forged)
    assert refused(verifier, forged)


def test_cache_is_bounded() -> None:
    """The cache keeps at most `max_entries` tokens, dropping the oldest."""
    verifier = make_verifier(max_entries=3)
    tokens = [mint_token(SECRET, n) for n in range(5)]
    assert [verifier.verify(t).user_id for t in tokens] == [0, 1, 2, 3, 4]
    assert len(verifier._claims) == 3


@pytest.mark.parametrize("admin", [False, True])
def test_cached_claims_keep_the_role(admin: bool) -> None:
    """The cached claims are the token's: the admin role neither appears nor disappears."""
    verifier = make_verifier()
    token = mint_token(SECRET, 9, admin=admin)
    assert verifier.verify(token).is_admin is admin
    assert verifier.verify(token).is_admin is admin
