"""JWT verification and minting with the algorithm pinned.

HS256 with `JWT_SECRET`, or RS256/ES256 with `JWT_PUBLIC_KEY`: the verifier
accepts exactly one algorithm family, so `none` and algorithm confusion (an
HS256 token signed with the public key as its secret) are refused.
"""

from __future__ import annotations

import base64
import hmac
import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import HMACAlgorithm

from shared.settings import JwtKeys

# A user id must fit PostgreSQL's bigint.
MAX_SUB_DIGITS = 18
# The header segments HS256 tokens come with from pyjwt, jsonwebtoken and jose.
CANONICAL_HS256_HEADERS = frozenset(
    base64.urlsafe_b64encode(json.dumps(header, separators=(",", ":")).encode())
    .rstrip(b"=")
    .decode()
    for header in (
        {"alg": "HS256", "typ": "JWT"},
        {"typ": "JWT", "alg": "HS256"},
        {"alg": "HS256"},
    )
)
BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


class InvalidToken(Exception):
    """The token is malformed, badly signed, expired, not yet valid or lacks `sub`."""


@dataclass(frozen=True, slots=True)
class Claims:
    user_id: int
    is_admin: bool
    # None: the token never expires.
    expires_at: datetime | None


class TokenVerifier:
    """Verify tokens with one pinned algorithm family."""

    def __init__(self, keys: JwtKeys) -> None:
        """Raises ValueError, naming the setting, for a key that cannot verify tokens."""
        self._key: Any
        self._jwt = jwt.PyJWT()
        self._options: jwt.types.Options = {"require": ["sub"], "verify_aud": False}
        # HS256 tokens in their common form, verified without pyjwt's generality.
        self._fast: _FastHs256 | None = None
        if keys.public_key is not None:
            try:
                self._key = load_pem_public_key(keys.public_key.encode())
            except ValueError as error:
                raise ValueError(f"JWT_PUBLIC_KEY: {error}") from None
            if isinstance(self._key, rsa.RSAPublicKey):
                self._algorithms = ["RS256"]
            elif isinstance(self._key, ec.EllipticCurvePublicKey):
                self._algorithms = ["ES256"]
            else:
                raise ValueError("JWT_PUBLIC_KEY must be an RSA or EC (P-256) public key")
        elif keys.secret is not None:
            self._key = keys.secret
            self._algorithms = ["HS256"]
            _use_prepared_secret(self._jwt, keys.secret)
            self._fast = _FastHs256.for_secret(self._jwt, keys.secret, self._options)
        else:
            raise ValueError("no JWT key configured")

    @property
    def fast_path(self) -> bool:
        """Whether common HS256 tokens skip pyjwt's generality (a seam test checks it)."""
        return self._fast is not None

    def verify(self, token: str) -> Claims:
        """Return the token's claims, or raise `InvalidToken`."""
        payload = self._fast.payload(token) if self._fast is not None else None
        if payload is not None:
            return _claims(payload)
        try:
            payload = self._jwt.decode(
                token, self._key, algorithms=self._algorithms, options=self._options
            )
        except (jwt.PyJWTError, ValueError, TypeError) as error:
            raise InvalidToken(str(error)) from None
        return _claims(payload)


class _PreparedHmac(HMACAlgorithm):
    """HS256 whose secret pyjwt checks once, not for every token.

    pyjwt makes sure an HMAC secret is no PEM, SSH, DER or JWK key by parsing
    it each time it verifies a token, about half of the verification. The
    secret never changes, so neither does the outcome.
    """

    def __init__(self, secret: str) -> None:
        super().__init__(HMACAlgorithm.SHA256)
        self._secret = secret
        try:
            self._prepared = super().prepare_key(secret)
        except jwt.InvalidKeyError as error:
            raise ValueError(f"JWT_SECRET: {error}") from None

    def prepare_key(self, key: str | bytes) -> bytes:
        return self._prepared if key == self._secret else super().prepare_key(key)


class _FastHs256:
    """The payload of an HS256 token that pyjwt would accept, in a fifth of its time.

    pyjwt's `decode` is general: any header, any algorithm, a per-character
    alphabet test and a re-encoding of every segment, two JSON parses: a
    tenth of a connect's server CPU. A token with one of
    the common HS256 headers needs less: the signature is compared as text
    with the one the secret gives (so only pyjwt's canonical encoding
    matches), the payload parsed once, and its claims checked by pyjwt's own
    `_validate_claims`. Anything else, or any doubt, returns None and pyjwt
    decides, with its own errors: this path only ever accepts what pyjwt
    accepts (`tests/unit/shared/test_tokens.py` compares the two).
    """

    def __init__(self, decoder: jwt.PyJWT, secret: bytes, options: jwt.types.Options) -> None:
        self._secret = secret
        self._decoder = decoder
        self._options = decoder._merge_options(options)

    @classmethod
    def for_secret(
        cls, decoder: jwt.PyJWT, secret: str, options: jwt.types.Options
    ) -> _FastHs256 | None:
        """None where pyjwt would warn about the key, or lacks what this relies on."""
        key = HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(secret)
        if HMACAlgorithm(HMACAlgorithm.SHA256).check_key_length(key) is not None:
            return None
        if not all(hasattr(decoder, name) for name in ("_merge_options", "_validate_claims")):
            return None
        return cls(decoder, key, options)

    def payload(self, token: str) -> dict[str, Any] | None:
        header, _, rest = token.partition(".")
        body, dot, signature = rest.partition(".")
        if (
            header not in CANONICAL_HS256_HEADERS
            or not dot
            or not BASE64URL.fullmatch(body)
            or len(body) % 4 == 1
        ):
            return None
        expected = hmac.digest(self._secret, f"{header}.{body}".encode(), "sha256")
        text = base64.urlsafe_b64encode(expected).rstrip(b"=").decode()
        # compare_digest refuses non-ASCII text (TypeError): such a signature is no match.
        if not signature.isascii() or not hmac.compare_digest(text, signature):
            return None
        data = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        if base64.urlsafe_b64encode(data).rstrip(b"=").decode() != body:
            return None  # not the canonical encoding: pyjwt refuses it
        try:
            payload = json.loads(data)
            if not isinstance(payload, dict):
                return None
            self._decoder._validate_claims(payload, self._options)
        except (ValueError, RecursionError, TypeError, jwt.PyJWTError):
            return None
        return payload


def _use_prepared_secret(decoder: jwt.PyJWT, secret: str) -> None:
    # `_jws` is where PyJWT keeps its algorithms; a release without it still verifies,
    # only slower.
    jws = getattr(decoder, "_jws", None)
    if isinstance(jws, jwt.PyJWS):
        jws.unregister_algorithm("HS256")
        jws.register_algorithm("HS256", _PreparedHmac(secret))


def _claims(payload: dict[str, Any]) -> Claims:
    sub = payload.get("sub")
    if not isinstance(sub, str) or not sub.isascii() or not sub.isdigit():
        raise InvalidToken("sub must be a string of digits")
    if len(sub) > MAX_SUB_DIGITS:
        raise InvalidToken("sub is too long")
    exp = payload.get("exp")
    expires_at = datetime.fromtimestamp(exp, UTC) if isinstance(exp, int | float) else None
    return Claims(user_id=int(sub), is_admin=payload.get("role") == "admin", expires_at=expires_at)


def mint_token(
    secret: str, user_id: int, *, admin: bool = False, ttl_seconds: int | None = 3600
) -> str:
    """An HS256 token for `user_id`; `ttl_seconds=None` mints one without `exp`."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": str(user_id), "iat": now}
    if admin:
        claims["role"] = "admin"
    if ttl_seconds is not None:
        claims["exp"] = now + ttl_seconds
    return jwt.encode(claims, secret, algorithm="HS256")
