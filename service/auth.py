"""Authenticating CDS Clients: the signed JWT of CDS Hooks 2.0 ("Trusting CDS Clients").

Every call to the service may carry ``Authorization: Bearer <JWT>``, signed by the CDS Client
(the EHR) with an asymmetric key published as a JWK Set. This module checks that token and
nothing else; it knows no FastAPI routes and no guideline logic.

What is checked, in order, and why:

1. The header has the ``Bearer`` scheme and a compact JWS (three base64url parts).
2. The JOSE header: ``alg`` must be asymmetric. ``none`` and every HMAC (``HS*``) are refused
   by name before any key is touched, because an HMAC "verified" with a public key is the
   classic key-confusion forgery. ``typ``, if present, must be ``JWT``. ``kid`` is required:
   it selects the key. ``jku``/``jwk``/``x5u`` are never followed; keys come from configuration
   only (a static JWK Set or a configured JWKS URL per trusted issuer).
3. ``iss`` must be allow-listed; its keys are the only ones tried.
4. The signature, with PyJWT against the selected JWK, using the algorithm the key admits
   (kty/crv must fit the ``alg``; a JWK ``alg``, ``use`` or ``key_ops`` must agree).
5. Claims: ``aud`` (string or array) contains the exact URL called; ``exp`` not passed and
   ``iat`` not in the future (both with leeway); ``exp - iat`` within the maximum lifetime, so
   a replay cache that remembers each ``jti`` until its token expires stays small and complete;
   ``jti`` never seen before for that issuer. ``sub`` is not part of CDS Hooks 2.0 and is not
   required.

Failures raise :class:`AuthError` carrying only a short reason code. Neither the token, its
parts nor its claims are ever logged or put into an exception; the only claim value that may be
logged is ``iss``: a trusted one as it is, and an untrusted one quoted and cut short, because an
issuer is a URL, not a secret, and "which issuer did it claim?" is the first question an operator
has about a refused EHR (a trailing slash, http for https).

Replay memory is per process: a deployment with several workers or instances detects a replay
only within the process that saw the first use.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import httpx2
import jwt
from cachetools import TLRUCache, TTLCache
from fastapi import HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "ACCEPTED_ALGORITHMS",
    "AuthError",
    "AuthSettings",
    "ClientAuthenticator",
    "TrustedIssuer",
    "VerifiedClient",
    "build_authenticator",
    "client_auth",
    "endpoint_url",
]

logger = logging.getLogger(__name__)

#: Algorithms a client may sign with. CDS Hooks 2.0 asks services to support ES384 and RS384;
#: the other SHA-2 ECDSA, RSASSA-PKCS1-v1_5 and RSASSA-PSS variants are equally asymmetric and
#: common in EHR stacks, so they are accepted too. Left out on purpose: ``none`` and ``HS*``
#: (no client authentication at all / key confusion), ``EdDSA`` and ``ES256K`` (not in the JWA
#: set CDS Hooks points at; add them here deliberately if a client needs them).
ACCEPTED_ALGORITHMS: Final[frozenset[str]] = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)

#: The curve an ECDSA algorithm requires (RFC 7518 §3.4); an ES384 token with a P-256 key is refused.
_EC_CURVE: Final[dict[str, str]] = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}

#: Claims CDS Hooks 2.0 makes mandatory. ``sub`` is deliberately absent.
_REQUIRED_CLAIMS: Final[list[str]] = ["iss", "aud", "exp", "iat", "jti"]

#: Larger tokens are refused unparsed; a CDS Hooks JWT is a few hundred bytes.
_MAX_TOKEN_CHARS: Final[int] = 16_384

#: A JWK Set larger than this is not a JWK Set we want to parse.
_MAX_JWKS_BYTES: Final[int] = 1_048_576

_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_LOCAL_HOSTS: Final[frozenset[str]] = frozenset({"localhost", "127.0.0.1", "::1"})


class TrustedIssuer(BaseModel):
    """One CDS Client we trust, and where its public keys come from.

    Exactly one of ``jwks_url`` (fetched over HTTPS, cached, refreshed on an unknown ``kid``)
    or ``jwks`` (a static JWK Set, for clients that hand over keys out of band) is set.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    iss: str = Field(min_length=1)
    jwks_url: str | None = None
    jwks: dict[str, Any] | None = None

    @field_validator("jwks_url")
    @classmethod
    def _https_only(cls, value: str | None) -> str | None:
        """Keys fetched over plain HTTP could be swapped in transit; only loopback is exempt."""
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme == "https" and parts.hostname:
            return value
        if parts.scheme == "http" and parts.hostname in _LOCAL_HOSTS:
            return value
        raise ValueError("jwks_url must be an https:// URL (http only for localhost)")

    @field_validator("jwks")
    @classmethod
    def _is_jwk_set(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """Catch a mis-pasted key at start-up rather than on the first clinical call."""
        if value is None:
            return value
        keys = value.get("keys")
        if not isinstance(keys, list) or not keys:
            raise ValueError('jwks must be a JWK Set: {"keys": [...]} with at least one key')
        for key in keys:
            if not isinstance(key, dict) or not isinstance(key.get("kid"), str) or not key["kid"]:
                raise ValueError("every key in jwks needs a non-empty string 'kid'")
            if key.get("kty") not in ("EC", "RSA"):
                raise ValueError("jwks keys must be EC or RSA public keys")
            _check_public_key(key)
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> TrustedIssuer:
        if (self.jwks_url is None) == (self.jwks is None):
            raise ValueError(f"issuer {self.iss!r}: set exactly one of jwks_url or jwks")
        return self


class AuthSettings(BaseModel):
    """Configuration of client authentication; nest it in the application's settings.

    ``enabled=False`` is for local development only: every request is then accepted unverified.
    ``public_base_url`` should be set in production: without it the expected ``aud`` is built
    from the request's own scheme and Host header, which a proxy may rewrite and a caller may
    choose.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    issuers: list[TrustedIssuer] = Field(default_factory=list)
    algorithms: list[str] = Field(default_factory=lambda: sorted(ACCEPTED_ALGORITHMS))
    max_token_lifetime_seconds: int = Field(default=300, gt=0)
    leeway_seconds: int = Field(default=30, ge=0, le=300)
    public_base_url: str | None = None
    jwks_cache_seconds: int = Field(default=3600, gt=0)
    jwks_min_refresh_seconds: float = Field(default=30.0, ge=0)
    jwks_timeout_seconds: float = Field(default=5.0, gt=0)
    replay_cache_size: int = Field(default=100_000, gt=0)

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        """Configuration may narrow the accepted algorithms, never widen them to HMAC or none."""
        unknown = sorted(set(value) - ACCEPTED_ALGORITHMS)
        if unknown:
            raise ValueError(
                f"unsupported algorithms {unknown}; allowed: {sorted(ACCEPTED_ALGORITHMS)}"
            )
        if not value:
            raise ValueError("at least one algorithm must be accepted")
        return value

    @field_validator("public_base_url")
    @classmethod
    def _absolute_url(cls, value: str | None) -> str | None:
        """The audience is compared as an exact string, so the base must be a full URL."""
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise ValueError("public_base_url must be an absolute http(s) URL without a query")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _unique_issuers(self) -> AuthSettings:
        names = [issuer.iss for issuer in self.issuers]
        if len(names) != len(set(names)):
            raise ValueError("each iss may appear only once in issuers")
        return self


@dataclass(frozen=True, slots=True)
class VerifiedClient:
    """Who called: the facts a handler may use (audit, tenant routing) once the JWT checked out."""

    iss: str
    jti: str
    kid: str
    tenant: str | None = None


class AuthError(Exception):
    """The request is not authenticated.

    ``reason`` is a short code and ``iss`` is set only once the issuer is known to be trusted.
    ``claimed_iss`` is set for ``untrusted_iss``: the issuer the token named, already made safe
    to log by :func:`_claimed_issuer`. Nothing else from the token is ever carried.
    """

    def __init__(self, reason: str, iss: str | None = None, claimed_iss: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.iss = iss
        self.claimed_iss = claimed_iss


class ClientAuthenticator:
    """Verifies CDS Client JWTs against the configured issuers.

    One instance serves the whole application: it holds the JWKS cache and the ``jti`` replay
    memory. Both caches are guarded by a thread lock (never held across an ``await``); JWKS
    fetches are serialised per issuer by an asyncio lock, so a burst of tokens with a new ``kid``
    causes one fetch, not one per request. Use it from one event loop, like the shared
    ``httpx2.AsyncClient`` it is given.
    """

    def __init__(
        self,
        settings: AuthSettings,
        http: httpx2.AsyncClient | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if any(issuer.jwks_url for issuer in settings.issuers) and http is None:
            raise ValueError("an httpx2.AsyncClient is needed to fetch issuers' jwks_url")
        self.settings = settings
        self._http = http
        self._monotonic = monotonic
        self._algorithms = frozenset(settings.algorithms)
        self._issuers = {issuer.iss: issuer for issuer in settings.issuers}
        self._static_keys = {
            issuer.iss: _index_jwks(issuer.jwks)
            for issuer in settings.issuers
            if issuer.jwks is not None
        }
        self._lock = threading.Lock()
        self._jwks_cache: TTLCache[str, dict[str, dict[str, Any]]] = TTLCache(
            maxsize=max(1, len(self._issuers)), ttl=settings.jwks_cache_seconds
        )
        self._last_fetch: dict[str, float] = {}
        self._fetch_locks = {iss: asyncio.Lock() for iss in self._issuers}
        # Each jti is remembered until its own token can no longer pass the exp check.
        self._seen_jti: TLRUCache[tuple[str, str], float] = TLRUCache(
            maxsize=settings.replay_cache_size,
            ttu=lambda _key, expires_at, _now: expires_at,
            timer=time.time,
        )

    async def verify(self, authorization_header: str | None, endpoint_url: str) -> VerifiedClient:
        """Check one request's ``Authorization`` header for a call to ``endpoint_url``."""
        try:
            client = await self._verify(authorization_header, endpoint_url)
        except AuthError as error:
            # Only the reason code and the iss are logged (an untrusted one quoted); never token
            # material. For a wrong aud, the URL it had to name: the service's own, behind a
            # proxy the one thing an operator needs to see (public_base_url or the scheme).
            expected = f" expected_aud={endpoint_url}" if error.reason == "wrong_aud" else ""
            logger.info(
                "client authentication failed: reason=%s iss=%s%s",
                error.reason,
                error.iss if error.claimed_iss is None else error.claimed_iss,
                expected,
            )
            raise
        logger.debug("client authenticated: iss=%s kid=%s", client.iss, client.kid)
        return client

    async def _verify(self, authorization_header: str | None, endpoint_url: str) -> VerifiedClient:
        token = _bearer_token(authorization_header)
        header = _unverified_header(token)
        alg = _checked_alg(header, self._algorithms)
        _check_typ(header)
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError("missing_kid")

        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthError("malformed_token") from None
        iss = unverified.get("iss")
        trusted = self._issuers.get(iss) if isinstance(iss, str) else None
        if trusted is None:
            raise AuthError("untrusted_iss", claimed_iss=_claimed_issuer(iss))

        try:
            jwk = await self._jwk_for(trusted, kid)
            key = _verification_key(jwk, alg)
            claims = _decode(
                token, key, alg, trusted.iss, endpoint_url, self.settings.leeway_seconds
            )
            jti, tenant = self._checked_claims(claims)
            self._remember_jti(trusted.iss, jti, claims["exp"])
        except AuthError as error:
            raise AuthError(error.reason, iss=trusted.iss) from None
        return VerifiedClient(iss=trusted.iss, jti=jti, kid=kid, tenant=tenant)

    def _checked_claims(self, claims: dict[str, Any]) -> tuple[str, str | None]:
        """Checks PyJWT leaves to us: numeric times, bounded lifetime, a real jti, tenant type."""
        exp, iat = claims["exp"], claims["iat"]
        if not _is_number(exp) or not _is_number(iat):
            raise AuthError("bad_time_claim")
        lifetime = exp - iat
        if lifetime <= 0 or lifetime > self.settings.max_token_lifetime_seconds:
            raise AuthError("lifetime_too_long" if lifetime > 0 else "bad_time_claim")
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti:
            raise AuthError("bad_jti")
        tenant = claims.get("tenant")
        if tenant is not None and not isinstance(tenant, str):
            raise AuthError("bad_tenant")
        return jti, tenant

    def _remember_jti(self, iss: str, jti: str, exp: float) -> None:
        """Record a jti until its token expires (plus leeway); a second sighting is a replay.

        Called last, after the signature and every other claim passed, so forged or otherwise
        invalid tokens cannot fill the memory or burn a legitimate client's jti.
        """
        key = (iss, jti)
        expires_at = float(exp) + self.settings.leeway_seconds
        with self._lock:
            if key in self._seen_jti:
                raise AuthError("replayed_jti")
            self._seen_jti.expire()
            if len(self._seen_jti) >= self.settings.replay_cache_size:
                # Evicting a live jti would silently re-open replay; refuse instead.
                logger.warning("jti replay memory full; refusing tokens until entries expire")
                raise AuthError("replay_cache_full")
            self._seen_jti[key] = expires_at

    async def _jwk_for(self, issuer: TrustedIssuer, kid: str) -> dict[str, Any]:
        """The issuer's JWK with this kid, fetching its JWKS when the cache lacks it.

        A fetch happens when the cached set expired or does not know the kid, but at most once
        per ``jwks_min_refresh_seconds`` per issuer, so tokens with invented kids cannot make
        the service hammer the client's JWKS endpoint.
        """
        static = self._static_keys.get(issuer.iss)
        if static is not None:
            if kid not in static:
                raise AuthError("unknown_kid")
            return static[kid]

        keys = self._cached_jwks(issuer.iss)
        if keys is not None and kid in keys:
            return keys[kid]
        async with self._fetch_locks[issuer.iss]:
            keys = self._cached_jwks(issuer.iss)  # another request may have refreshed meanwhile
            if keys is not None and kid in keys:
                return keys[kid]
            now = self._monotonic()
            last = self._last_fetch.get(issuer.iss)
            if last is not None and now - last < self.settings.jwks_min_refresh_seconds:
                raise AuthError("unknown_kid" if keys is not None else "jwks_unavailable")
            self._last_fetch[issuer.iss] = now
            keys = await self._fetch_jwks(issuer)
            with self._lock:
                self._jwks_cache[issuer.iss] = keys
        if kid not in keys:
            raise AuthError("unknown_kid")
        return keys[kid]

    def _cached_jwks(self, iss: str) -> dict[str, dict[str, Any]] | None:
        with self._lock:
            return self._jwks_cache.get(iss)

    async def _fetch_jwks(self, issuer: TrustedIssuer) -> dict[str, dict[str, Any]]:
        """GET the issuer's JWK Set; any failure is an authentication failure (fail closed)."""
        assert self._http is not None and issuer.jwks_url is not None  # checked in __init__
        try:
            response = await self._http.get(
                issuer.jwks_url,
                timeout=self.settings.jwks_timeout_seconds,
                follow_redirects=False,
                headers={"Accept": "application/json"},
            )
            response.raise_for_status()
            if len(response.content) > _MAX_JWKS_BYTES:
                raise ValueError("JWK Set too large")
            document = response.json()
            keys = _index_jwks(document)
        except (httpx2.HTTPError, ValueError) as error:
            logger.warning("JWKS fetch failed: iss=%s error=%s", issuer.iss, type(error).__name__)
            raise AuthError("jwks_unavailable") from None
        logger.info("JWKS fetched: iss=%s keys=%d", issuer.iss, len(keys))
        return keys


def build_authenticator(
    settings: AuthSettings, http: httpx2.AsyncClient | None
) -> ClientAuthenticator | None:
    """The authenticator for these settings, or None when authentication is switched off.

    Refuses an enabled configuration without issuers: it would reject every call, which is
    better found at start-up than as a wall of 401s in the clinic.
    """
    if not settings.enabled:
        logger.warning("CDS client authentication is DISABLED; every request is accepted")
        return None
    if not settings.issuers:
        raise ValueError("auth is enabled but no trusted issuers are configured")
    if settings.public_base_url is None:
        logger.warning(
            "auth.public_base_url is not set; the expected aud follows the request's Host header"
        )
    return ClientAuthenticator(settings, http)


def endpoint_url(request: Request, public_base_url: str | None = None) -> str:
    """The URL the client called, as the ``aud`` claim must name it (no query, no fragment).

    Behind a proxy, the public base URL replaces scheme, host and any prefix the proxy strips.
    """
    if public_base_url is not None:
        return public_base_url.rstrip("/") + request.url.path
    return str(request.url.replace(query="", fragment=""))


def client_auth(
    authenticator: ClientAuthenticator | None,
) -> Callable[[Request], Awaitable[VerifiedClient | None]]:
    """A FastAPI dependency authenticating the CDS Client of each request.

    With ``authenticator=None`` (auth disabled) the dependency yields None. Otherwise it yields
    the :class:`VerifiedClient` or ends the request with a bare 401 and
    ``WWW-Authenticate: Bearer``; the reason stays in the service's own log.
    """

    async def dependency(request: Request) -> VerifiedClient | None:
        if authenticator is None:
            return None
        url = endpoint_url(request, authenticator.settings.public_base_url)
        try:
            return await authenticator.verify(request.headers.get("authorization"), url)
        except AuthError:
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail="Unauthorized",
                headers={"WWW-Authenticate": "Bearer"},
            ) from None

    return dependency


def _bearer_token(authorization_header: str | None) -> str:
    """The compact JWS from ``Bearer <JWT>``; the scheme name is case-insensitive (RFC 7235)."""
    if not authorization_header:
        raise AuthError("missing_header")
    scheme, _, token = authorization_header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError("not_bearer")
    token = token.strip()
    if len(token) > _MAX_TOKEN_CHARS or not _COMPACT_JWS.fullmatch(token):
        raise AuthError("malformed_token")
    return token


def _unverified_header(token: str) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise AuthError("malformed_token") from None
    return header


def _checked_alg(header: dict[str, Any], accepted: frozenset[str]) -> str:
    """Refuse ``none`` and HMAC by name first, then anything not configured."""
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise AuthError("missing_alg")
    if alg.lower() == "none" or alg.upper().startswith("HS"):
        raise AuthError("forbidden_alg")
    if alg not in accepted:
        raise AuthError("unsupported_alg")
    return alg


def _check_typ(header: dict[str, Any]) -> None:
    """``typ`` is optional; when present it must say JWT (media types are case-insensitive)."""
    if "typ" not in header:
        return
    typ = header["typ"]
    if not isinstance(typ, str) or typ.lower() not in ("jwt", "application/jwt"):
        raise AuthError("bad_typ")


def _verification_key(jwk: dict[str, Any], alg: str) -> jwt.PyJWK:
    """A PyJWK bound to ``alg``, after checking the JWK may be used with it.

    Binding the algorithm to the key (not to the token's word) is what stops an RSA key
    being used under a different scheme than its owner intended.
    """
    kty = jwk.get("kty")
    if alg.startswith("ES"):
        if kty != "EC" or jwk.get("crv") != _EC_CURVE[alg]:
            raise AuthError("key_alg_mismatch")
    elif kty != "RSA":
        raise AuthError("key_alg_mismatch")
    if "alg" in jwk and jwk["alg"] != alg:
        raise AuthError("key_alg_mismatch")
    if "use" in jwk and jwk["use"] != "sig":
        raise AuthError("key_not_for_signing")
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise AuthError("key_not_for_signing")
    try:
        return jwt.PyJWK(jwk, algorithm=alg)
    except (jwt.PyJWTError, ValueError, TypeError):
        raise AuthError("bad_key") from None


def _decode(
    token: str, key: jwt.PyJWK, alg: str, iss: str, audience: str, leeway: int
) -> dict[str, Any]:
    """Signature, iss, aud, exp and iat through PyJWT, errors mapped to reason codes."""
    try:
        return jwt.decode(
            token,
            key=key,
            algorithms=[alg],
            audience=audience,
            issuer=iss,
            leeway=leeway,
            options={"require": _REQUIRED_CLAIMS, "enforce_minimum_key_length": True},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("expired") from None
    except jwt.ImmatureSignatureError:
        raise AuthError("not_yet_valid") from None
    except jwt.InvalidAudienceError:
        raise AuthError("wrong_aud") from None
    except jwt.InvalidIssuerError:
        raise AuthError("untrusted_iss") from None
    except jwt.MissingRequiredClaimError:
        raise AuthError("missing_claim") from None
    except jwt.InvalidSignatureError:
        raise AuthError("bad_signature") from None
    except jwt.InvalidKeyError:
        raise AuthError("bad_key") from None
    except jwt.PyJWTError:
        raise AuthError("invalid_token") from None


def _index_jwks(document: Any) -> dict[str, dict[str, Any]]:
    """Map kid -> JWK for the usable keys of a JWK Set; keys without a kid cannot be selected."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK Set")
    keys: dict[str, dict[str, Any]] = {}
    for jwk in document["keys"]:
        if isinstance(jwk, dict) and isinstance(jwk.get("kid"), str) and jwk["kid"]:
            keys.setdefault(jwk["kid"], jwk)
    return keys


#: JWK members of a private key (RFC 7518 §6.2.2, §6.3.2).
_PRIVATE_MEMBERS: Final[frozenset[str]] = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth"})


def _check_public_key(key: dict[str, Any]) -> None:
    """A static key must be a usable public key: a truncated coordinate or a missing member was
    accepted at start-up and refused every token (``bad_key``); a pasted private key put the
    client's signing secret into the service's configuration."""
    if _PRIVATE_MEMBERS & key.keys():
        raise ValueError(f"jwks key {key['kid']!r} is a private key: give the public key only")
    try:
        jwt.PyJWK(key)
    except jwt.PyJWTError as error:
        raise ValueError(f"jwks key {key['kid']!r} is not a usable key: {error}") from None


#: An untrusted iss is logged up to this many characters: enough for any issuer URL, while a
#: token of 16 kB cannot put 16 kB into every log line.
_MAX_LOGGED_ISS: Final[int] = 200


def _claimed_issuer(value: Any) -> str:
    """The ``iss`` a refused token claimed, as the log shows it. Why: with ``iss=None`` an
    operator could not tell a typo in ``auth.issuers`` (a trailing slash, http for https) from a
    stranger. Quoted by ``repr``, so a trailing space shows and a newline or control character
    cannot forge a log line; cut at :data:`_MAX_LOGGED_ISS` characters. A missing or non-string
    claim is named as such, since there is no issuer to show."""
    if value is None:
        return "<no iss claim>"
    if not isinstance(value, str):
        return f"<iss is not a string but {type(value).__name__}>"
    if len(value) > _MAX_LOGGED_ISS:
        return f"{value[:_MAX_LOGGED_ISS]!r}... ({len(value)} characters)"
    return repr(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
