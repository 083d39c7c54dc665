"""JWT verification: pinned algorithms, required `sub`, `exp` and `nbf` honoured."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.settings import JwtKeys
from shared.tokens import InvalidToken, TokenVerifier, mint_token

SECRET = "k" * 40
VERIFIER = TokenVerifier(JwtKeys(secret=SECRET, public_key=None))


def _hs256(claims: dict[str, Any], key: str = SECRET) -> str:
    return jwt.encode(claims, key, algorithm="HS256")


def _public_pem(private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _forge_hs256(claims: dict[str, Any], key: bytes) -> str:
    """What an attacker sends: HS256 signed with the server's public PEM as the secret."""

    def part(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = part(b'{"alg":"HS256","typ":"JWT"}') + b"." + part(json.dumps(claims).encode())
    signature = hmac.new(key, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + part(signature)).decode()


def test_minted_token_verifies_with_user_and_role() -> None:
    """A minted admin token gives the integer user id, the admin flag and the expiry."""
    claims = VERIFIER.verify(mint_token(SECRET, 42, admin=True, ttl_seconds=60))
    assert claims.user_id == 42
    assert claims.is_admin
    assert claims.expires_at is not None
    assert 50 < claims.expires_at.timestamp() - time.time() <= 60


def test_token_without_exp_never_expires() -> None:
    """`exp` is optional; without it `expires_at` is None."""
    claims = VERIFIER.verify(mint_token(SECRET, 7, ttl_seconds=None))
    assert (claims.user_id, claims.is_admin, claims.expires_at) == (7, False, None)


@pytest.mark.parametrize(
    "token",
    [
        _hs256({"sub": "1", "exp": int(time.time()) - 10}),
        _hs256({"sub": "1", "nbf": int(time.time()) + 600}),
        _hs256({"role": "admin"}),
        _hs256({"sub": "abc"}),
        _hs256({"sub": "-5"}),
        _hs256({"sub": "1" * 19}),
        _hs256({"sub": "1"}, key="x" * 40),
        jwt.encode({"sub": "1"}, "", algorithm="none"),
        "not.a.token",
        "",
    ],
    ids=[
        "expired",
        "not-yet-valid",
        "no-sub",
        "letters",
        "negative",
        "too-long",
        "wrong-key",
        "alg-none",
        "garbage",
        "empty",
    ],
)
def test_bad_tokens_are_refused(token: str) -> None:
    """Expired, premature, malformed, unsigned and wrongly signed tokens raise InvalidToken."""
    with pytest.raises(InvalidToken):
        VERIFIER.verify(token)


def test_rs256_public_key_and_no_algorithm_confusion() -> None:
    """With a public key, RS256 verifies; an HS256 token keyed with the PEM is refused."""
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = _public_pem(private_key)
    verifier = TokenVerifier(JwtKeys(secret=None, public_key=pem))
    assert verifier.verify(jwt.encode({"sub": "3"}, private_key, algorithm="RS256")).user_id == 3
    forged = _forge_hs256({"sub": "3"}, pem.encode())
    with pytest.raises(InvalidToken):
        verifier.verify(forged)
    with pytest.raises(InvalidToken):
        verifier.verify(mint_token("s" * 40, 3))


def test_es256_public_key() -> None:
    """An EC P-256 public key verifies ES256 tokens."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    verifier = TokenVerifier(JwtKeys(secret=None, public_key=_public_pem(private_key)))
    token = jwt.encode({"sub": "9", "role": "admin"}, private_key, algorithm="ES256")
    claims = verifier.verify(token)
    assert (claims.user_id, claims.is_admin) == (9, True)


# What pyjwt alone decides, for comparison with the verifier's fast path.
PYJWT_OPTIONS: Any = {"require": ["sub"], "verify_aud": False}


def _pyjwt_outcome(token: str) -> dict[str, Any] | str:
    try:
        return dict(jwt.decode(token, SECRET, algorithms=["HS256"], options=PYJWT_OPTIONS))
    except jwt.PyJWTError as error:
        return type(error).__name__


def _fast_outcome(token: str) -> dict[str, Any] | None:
    fast = VERIFIER._fast
    assert fast is not None, "a 40-byte secret gets the fast path"
    return fast.payload(token)


def _segment(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _signed(header: bytes, body: bytes, key: str = SECRET) -> str:
    signing_input = f"{_segment(header)}.{_segment(body)}"
    signature = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_segment(signature)}"


CLAIM_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.sampled_from([-3600, -2, 2, 3600]).map(lambda delta: int(time.time()) + delta),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(["1", "42", "-5", "1e3", " 7"]),
    st.lists(st.integers(), max_size=2),
)
HEADERS = st.sampled_from(
    [
        b'{"alg":"HS256","typ":"JWT"}',
        b'{"typ":"JWT","alg":"HS256"}',
        b'{"alg":"HS256"}',
        b'{"alg":"HS256","typ":"JWT","kid":1}',
        b'{"alg":"none","typ":"JWT"}',
        b'{"alg":"HS384","typ":"JWT"}',
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    HEADERS,
    st.dictionaries(st.sampled_from(["sub", "exp", "nbf", "iat", "jti", "role"]), CLAIM_VALUES),
    st.sampled_from(["as signed", "wrong key", "padded", "payload tampered", "bytes appended"]),
)
def test_the_fast_path_accepts_only_what_pyjwt_accepts_and_the_same_payload(
    header: bytes, claims: dict[str, Any], change: str
) -> None:
    """Whatever header, claims and tampering: a payload the fast path returns is exactly what pyjwt
    returns for that token."""
    body = json.dumps(claims).encode()
    token = _signed(header, body, "x" * 40 if change == "wrong key" else SECRET)
    if change == "padded":
        token += "="
    elif change == "payload tampered":
        first, _, signature = token.split(".")
        token = f"{first}.{_segment(body + b' ')}.{signature}"
    elif change == "bytes appended":
        token += "A"
    fast, pyjwt = _fast_outcome(token), _pyjwt_outcome(token)
    if fast is not None:
        assert fast == pyjwt
    if change == "as signed" and header in (b'{"alg":"HS256","typ":"JWT"}', b'{"alg":"HS256"}'):
        # The common form is decided here, not handed on, whenever pyjwt accepts it.
        assert fast == pyjwt or isinstance(pyjwt, str)


def test_a_common_token_takes_the_fast_path_and_gives_the_same_claims() -> None:
    """A token as `mint_token` makes it is decided by the fast path, with pyjwt's payload."""
    token = mint_token(SECRET, 42, admin=True, ttl_seconds=60)
    assert _fast_outcome(token) == _pyjwt_outcome(token)
    assert VERIFIER.verify(token).user_id == 42


@pytest.mark.parametrize(
    "token",
    [
        _signed(b'{"alg":"HS256","typ":"JWT"}', b'{"sub":"1"}') + "=",
        _signed(b'{"alg":"HS256","typ":"JWT"}', b'{"sub":"1","exp":"soon"}'),
        _signed(b'{"alg":"HS256","typ":"JWT"}', b'["sub"]'),
        _signed(b'{"alg":"HS256","typ":"JWT"}', b'{"sub":1}'),
        _signed(b'{"alg":"HS256","typ":"JWT"}', b'{"sub":"1"}', key="y" * 40),
        _signed(b'{"alg":"HS256","typ":"JWT"}', b'{"sub":"1"}')[:-1] + "\u00e9",
    ],
    ids=[
        "padded-signature",
        "exp-not-a-number",
        "payload-not-an-object",
        "sub-number",
        "wrong-key",
        "non-ascii-signature",
    ],
)
def test_what_the_fast_path_doubts_goes_to_pyjwt(token: str) -> None:
    """Padding, bad claim types, a non-object payload and a wrong key leave the decision to pyjwt,
    whose refusals become InvalidToken."""
    assert _fast_outcome(token) is None
    outcome = _pyjwt_outcome(token)
    if isinstance(outcome, str):
        with pytest.raises(InvalidToken):
            VERIFIER.verify(token)


def test_a_short_secret_gets_no_fast_path_and_pyjwt_warns_as_before() -> None:
    """A secret pyjwt would warn about gets no fast path, so the warning is not lost."""
    verifier = TokenVerifier(JwtKeys(secret="short", public_key=None))
    assert not verifier.fast_path


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=200),
        st.builds(
            lambda body, signature: f"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{body}.{signature}",
            st.text(max_size=60),
            st.text(max_size=60),
        ),
    )
)
def test_any_text_as_a_token_is_refused_with_invalid_token(text: str) -> None:
    """Whatever arrives in a query string (non-ASCII, dots, junk after a common header) is
    refused with InvalidToken, never another exception."""
    with pytest.raises(InvalidToken):
        VERIFIER.verify(text)
