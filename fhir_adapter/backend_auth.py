"""SMART Backend Services: access tokens for unattended, system-to-system FHIR access.

Why: bulk exports and population sweeps run without a user, so there is no launch and no login;
the FHIR server's authorisation server instead trusts a key pair registered for our client (its
public JWKS). Each token request proves possession of the private key with a short-lived signed
JWT, the *client assertion* (SMART App Launch 2.x, "Backend Services"; RFC 7523):

1. discover the token endpoint from ``[base]/.well-known/smart-configuration``;
2. sign an assertion with RS384 or ES384: ``iss`` = ``sub`` = client_id, ``aud`` = the token
   endpoint URL, ``exp`` at most five minutes ahead, a unique ``jti`` (servers refuse replays),
   and a ``kid`` header naming the registered key;
3. POST ``grant_type=client_credentials``, the scope, ``client_assertion_type`` (jwt-bearer) and
   the assertion to the token endpoint;
4. cache the access token until shortly before ``expires_in`` runs out, so a long export does
   not ask for a token per request yet never sends one that is about to expire.

Failures are typed like :mod:`fhir_adapter.rest` (all are :class:`~fhir_adapter.rest.FhirError`):
:class:`BackendAuthRejected` when the authorisation server refuses us (``invalid_client``,
``invalid_scope`` ...: fix the registration or configuration, retrying will not help),
:class:`BackendAuthUnavailable` when it cannot be reached or answers with something unusable,
:class:`BackendAuthTimeout` when the time budget runs out. Neither the private key, the assertion
nor the access token is ever logged or put into a message; ``repr`` shows none of them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import httpx2
import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from fhir_adapter.rest import FhirError, FhirTimeout

__all__ = [
    "ASSERTION_TYPE",
    "MAX_ASSERTION_LIFETIME",
    "Algorithm",
    "BackendAuthError",
    "BackendAuthRejected",
    "BackendAuthTimeout",
    "BackendAuthUnavailable",
    "BackendServicesAuth",
    "PrivateKey",
    "client_assertion",
    "discover_token_endpoint",
    "key_id",
    "load_private_key",
    "public_jwks",
]

log = logging.getLogger(__name__)

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFETIME = 300
"""SMART: the assertion's ``exp`` is no more than five minutes in the future."""

DEFAULT_ASSERTION_LIFETIME = 240
"""A minute below the maximum, so a server whose clock runs a little fast still accepts it."""

DEFAULT_EXPIRES_IN = 300
"""Assumed token lifetime when a server leaves out ``expires_in`` (SMART requires it)."""

_MAX_BODY = 256 * 1024

Algorithm = Literal["RS384", "ES384"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class BackendAuthError(FhirError):
    """No access token could be obtained; the message is plain words, safe to log and show."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        diagnostics: str | None = None,
        error: str | None = None,
    ) -> None:
        super().__init__(message, status=status, diagnostics=diagnostics)
        self.error = error
        """The OAuth ``error`` code (``invalid_client``, ``invalid_scope`` ...), if one came."""


class BackendAuthRejected(BackendAuthError):  # noqa: N818 (reads as the outcome)
    """The authorisation server refused the client, its key or the scope: retrying won't help."""


class BackendAuthUnavailable(BackendAuthError):  # noqa: N818 (reads as the outcome)
    """The authorisation server could not be reached or answered with something unusable."""


class BackendAuthTimeout(BackendAuthError, FhirTimeout):  # noqa: N818 (reads as the outcome)
    """The time budget ran out before a token was obtained."""


# --- keys -------------------------------------------------------------------------------------


def load_private_key(source: bytes | str | Path, password: bytes | None = None) -> PrivateKey:
    """An RSA (>= 2048 bits) or EC P-384 private key from PEM bytes/text or a PEM file path.

    Why only these: SMART Backend Services requires servers to support RS384 and ES384, and
    nothing else is interoperable; failing here beats an ``invalid_client`` at 3 a.m.
    """
    if isinstance(source, Path):
        data = source.read_bytes()
    elif isinstance(source, str):
        data = source.encode()
    else:
        data = source
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a usable PEM private key ({type(exc).__name__})") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError("the private key must be RSA (RS384) or EC P-384 (ES384)")
    _algorithm_for(key, None)  # checks the RSA size and the EC curve
    return key


def _algorithm_for(key: object, requested: Algorithm | None) -> Algorithm:
    """The signing algorithm the key supports, checked against an explicit choice."""
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ValueError("RSA keys for SMART Backend Services need at least 2048 bits")
        algorithm: Algorithm = "RS384"
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP384R1):
            raise ValueError("EC keys for SMART Backend Services must use curve P-384 (ES384)")
        algorithm = "ES384"
    else:
        raise ValueError("the private key must be RSA (RS384) or EC P-384 (ES384)")
    if requested is not None and requested != algorithm:
        raise ValueError(f"a {algorithm} key cannot sign {requested}")
    return algorithm


def _public_jwk(key: PrivateKey) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(public))
    else:
        jwk = json.loads(ECAlgorithm.to_jwk(public))
    return jwk


def key_id(key: PrivateKey) -> str:
    """The RFC 7638 SHA-256 thumbprint of the public key: a stable default ``kid``."""
    jwk = _public_jwk(key)
    members = ("e", "kty", "n") if jwk["kty"] == "RSA" else ("crv", "kty", "x", "y")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def public_jwks(key: PrivateKey, kid: str | None = None) -> dict[str, Any]:
    """The JWKS to register with the authorisation server (public part only)."""
    algorithm = _algorithm_for(key, None)
    jwk = _public_jwk(key)
    jwk.update({"alg": algorithm, "use": "sig", "key_ops": ["verify"], "kid": kid or key_id(key)})
    return {"keys": [jwk]}


def client_assertion(
    *,
    client_id: str,
    token_url: str,
    key: PrivateKey,
    kid: str,
    algorithm: Algorithm | None = None,
    lifetime: int = DEFAULT_ASSERTION_LIFETIME,
    now: float | None = None,
) -> str:
    """A signed client assertion JWT for one token request (a fresh ``jti`` each call).

    No ``iat``/``nbf``: SMART does not ask for them, and some verifiers reject an ``iat`` a
    second in their future, which a client clock slightly ahead of the server's produces.
    """
    if not 0 < lifetime <= MAX_ASSERTION_LIFETIME:
        raise ValueError(f"assertion lifetime must be 1..{MAX_ASSERTION_LIFETIME} seconds")
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "exp": issued + lifetime,
        "jti": secrets.token_urlsafe(32),
    }
    return jwt.encode(
        claims,
        key,
        algorithm=_algorithm_for(key, algorithm),
        headers={"kid": kid, "typ": "JWT"},
    )


# --- discovery --------------------------------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443}


def discover_token_endpoint(
    client: httpx2.Client,
    fhir_base_url: str,
    *,
    algorithm: Algorithm | None = None,
    timeout: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """The token endpoint from ``[base]/.well-known/smart-configuration``.

    Checks what the document says it supports (``private_key_jwt``, the signing algorithm,
    ``client_credentials``) so a mismatch fails here with a clear message instead of as an
    opaque ``invalid_client`` later. A token endpoint on plain http is refused when the FHIR
    server is on https: the downgrade would expose the assertion.
    """
    base = _http_url(fhir_base_url, "fhir_base_url", ValueError)
    url = f"{str(base).rstrip('/')}/.well-known/smart-configuration"
    what = "SMART configuration discovery"
    status, body = _send(
        client, "GET", url, what, timeout, headers={"Accept": "application/json"}, clock=clock
    )
    if status != 200:
        raise BackendAuthUnavailable(
            f"The FHIR server answered the {what} with HTTP {status}.", status=status
        )
    document = _json_object(body, what)
    endpoint = document.get("token_endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise BackendAuthUnavailable("The SMART configuration has no token_endpoint.")
    token_url = _http_url(endpoint, "The SMART configuration's token_endpoint")
    if base.scheme == "https" and token_url.scheme != "https":
        raise BackendAuthRejected(
            "The SMART configuration names a plain-http token endpoint for an https FHIR "
            "server; refused, so the client assertion is never sent unencrypted."
        )
    _check_supported(document, "token_endpoint_auth_methods_supported", "private_key_jwt")
    _check_supported(document, "grant_types_supported", "client_credentials")
    if algorithm is not None:
        _check_supported(document, "token_endpoint_auth_signing_alg_values_supported", algorithm)
    return str(token_url)


def _check_supported(document: dict[str, Any], field: str, needed: str) -> None:
    """A listed capability must include ours; an absent list is taken as no statement."""
    values = document.get(field)
    if isinstance(values, list) and needed not in values:
        raise BackendAuthRejected(
            f"The SMART configuration does not list {needed!r} in {field}; this client "
            "needs it for SMART Backend Services."
        )


# --- the token source -------------------------------------------------------------------------


class BackendServicesAuth:
    """Access tokens for one registered backend client, cached until shortly before expiry.

    Thread-safe: one instance can serve several exports; only one token request runs at a time.
    The caller owns the ``httpx2.Client`` (TLS settings, proxies, closing it). ``clock`` (a
    monotonic clock, for the cache) and ``wall_clock`` (Unix time, for ``exp``) are injectable
    for tests.
    """

    def __init__(
        self,
        client: httpx2.Client,
        *,
        fhir_base_url: str,
        client_id: str,
        private_key: PrivateKey | bytes | str | Path,
        scope: str = "system/*.rs",
        kid: str | None = None,
        algorithm: Algorithm | None = None,
        token_url: str | None = None,
        request_timeout: float = 10.0,
        assertion_lifetime: int = DEFAULT_ASSERTION_LIFETIME,
        refresh_margin: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not client_id:
            raise ValueError("client_id is required")
        if not scope.strip():
            raise ValueError("scope is required, e.g. 'system/*.rs'")
        if not 0 < assertion_lifetime <= MAX_ASSERTION_LIFETIME:
            raise ValueError(f"assertion_lifetime must be 1..{MAX_ASSERTION_LIFETIME} seconds")
        key = (
            private_key
            if isinstance(private_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
            else load_private_key(private_key)
        )
        self._client = client
        self._fhir_base_url = str(_http_url(fhir_base_url, "fhir_base_url", ValueError))
        self._client_id = client_id
        self._key = key
        self._algorithm = _algorithm_for(key, algorithm)
        self._kid = kid or key_id(key)
        self._scope = " ".join(scope.split())
        self._token_url = str(_http_url(token_url, "token_url", ValueError)) if token_url else None
        self._request_timeout = request_timeout
        self._assertion_lifetime = assertion_lifetime
        self._refresh_margin = refresh_margin
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0
        self.granted_scope: str | None = None
        """The scope the server granted with the current token (may be narrower)."""

    def __repr__(self) -> str:
        return f"BackendServicesAuth(client_id={self._client_id!r}, kid={self._kid!r})"

    @property
    def algorithm(self) -> Algorithm:
        return self._algorithm

    @property
    def kid(self) -> str:
        return self._kid

    def token_endpoint(self, deadline: float | None = None) -> str:
        """The configured or discovered token URL (discovered once, then remembered)."""
        if self._token_url is None:
            timeout = self._timeout(deadline, "SMART configuration discovery")
            self._token_url = discover_token_endpoint(
                self._client,
                self._fhir_base_url,
                algorithm=self._algorithm,
                timeout=timeout,
                clock=self._clock,
            )
        return self._token_url

    def access_token(self, deadline: float | None = None) -> str:
        """A valid access token, from the cache or a new token request.

        ``deadline`` is a ``clock()`` value (``time.monotonic()`` by default) that bounds the
        discovery and token request.
        """
        with self._lock:
            if self._token is not None and self._clock() < self._refresh_at:
                return self._token
            self._token = None
            return self._request_token(deadline)

    def invalidate(self) -> None:
        """Forget the cached token, e.g. after the FHIR server answered 401 with it."""
        with self._lock:
            self._token = None
            self._refresh_at = 0.0

    def _timeout(self, deadline: float | None, what: str) -> float:
        if deadline is None:
            return self._request_timeout
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise BackendAuthTimeout(f"The time budget ran out before the {what}.")
        return min(self._request_timeout, remaining)

    def _request_token(self, deadline: float | None) -> str:
        token_url = self.token_endpoint(deadline)
        what = "token request"
        timeout = self._timeout(deadline, what)
        assertion = client_assertion(
            client_id=self._client_id,
            token_url=token_url,
            key=self._key,
            kid=self._kid,
            algorithm=self._algorithm,
            lifetime=self._assertion_lifetime,
            now=self._wall_clock(),
        )
        form = {
            "grant_type": "client_credentials",
            "scope": self._scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        }
        started = self._clock()
        status, answer = _send(
            self._client,
            "POST",
            token_url,
            what,
            timeout,
            headers={"Accept": "application/json"},
            data=form,
            clock=self._clock,
        )
        log.debug(
            "SMART token request: HTTP %d in %.0f ms", status, (self._clock() - started) * 1000
        )
        if status != 200:
            _raise_token_error(status, answer, assertion)
        body = _json_object(answer, what)
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise BackendAuthUnavailable("The token response has no access_token.")
        if not _is_bearer_token(token):
            raise BackendAuthUnavailable("The token response's access_token is not a bearer token.")
        token_type = body.get("token_type")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise BackendAuthUnavailable("The token response's token_type is not 'bearer'.")
        expires_in = body.get("expires_in", DEFAULT_EXPIRES_IN)
        if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
            raise BackendAuthUnavailable("The token response's expires_in is not a number.")
        if expires_in <= 0:
            raise BackendAuthUnavailable("The token response's expires_in is not positive.")
        # Refresh a margin before expiry (at most half the lifetime, so a short-lived token is
        # still reused) measured from when the request was sent: never later than the server.
        margin = min(self._refresh_margin, expires_in / 2)
        self._refresh_at = started + expires_in - margin
        scope = body.get("scope")
        self.granted_scope = scope if isinstance(scope, str) else None
        self._token = token
        log.info(
            "SMART backend token obtained for %s (expires in %d s)", self._client_id, expires_in
        )
        return token


def _raise_token_error(status: int, answer: bytes, assertion: str) -> None:
    """Map a refused token request to a typed error with the OAuth error code."""
    error: str | None = None
    description: str | None = None
    try:
        body = orjson.loads(answer)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        if isinstance(body.get("error"), str):
            error = body["error"][:64]
        if isinstance(body.get("error_description"), str):
            description = body["error_description"].replace(assertion, "[assertion]")[:300]
    if status in (400, 401, 403) and error is not None:
        raise BackendAuthRejected(
            f"The authorisation server refused the token request ({error}, HTTP {status}).",
            status=status,
            diagnostics=description,
            error=error,
        )
    if 400 <= status < 500 and status not in (408, 429):
        raise BackendAuthRejected(
            f"The authorisation server refused the token request (HTTP {status}).",
            status=status,
            diagnostics=description,
            error=error,
        )
    raise BackendAuthUnavailable(
        f"The authorisation server failed the token request (HTTP {status}).",
        status=status,
        diagnostics=description,
        error=error,
    )


# --- HTTP helpers -----------------------------------------------------------------------------


def _http_url(
    value: str, what: str, error: Callable[[str], Exception] = BackendAuthUnavailable
) -> httpx2.URL:
    """An absolute http(s) URL; ``error`` makes the exception (ValueError for our own settings,
    BackendAuthUnavailable for what a server told us)."""
    try:
        url = httpx2.URL(value)
    except (httpx2.InvalidURL, TypeError):
        raise error(f"{what} is not a valid URL.") from None
    if url.scheme not in _DEFAULT_PORTS or not url.host or url.fragment:
        raise error(f"{what} is not an absolute http(s) URL.")
    return url


def _send(
    client: httpx2.Client,
    method: str,
    url: str,
    what: str,
    timeout: float,
    *,
    headers: dict[str, str],
    data: dict[str, str] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[int, bytes]:
    """One request: its status and body, within ``timeout`` in all (a server trickling its
    answer a byte at a time never trips the read timeout, and must not hold an export past its
    budget). Redirects are not followed (a redirected POST would carry the assertion)."""
    deadline = clock() + timeout
    try:
        with client.stream(
            method, url, headers=headers, data=data, timeout=timeout, follow_redirects=False
        ) as response:
            return response.status_code, _read_body(response, what, deadline, clock)
    except httpx2.TimeoutException:
        raise BackendAuthTimeout(f"The authorisation server did not answer the {what}.") from None
    except httpx2.TransportError as exc:
        raise BackendAuthUnavailable(
            f"The authorisation server could not be reached for the {what} ({type(exc).__name__})."
        ) from None


def _read_body(
    response: httpx2.Response, what: str, deadline: float, clock: Callable[[], float]
) -> bytes:
    """The body, chunk by chunk: at most ``_MAX_BODY`` bytes, and not past the deadline."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        if clock() > deadline:
            raise BackendAuthTimeout(f"The authorisation server did not answer the {what} in time.")
        size += len(chunk)
        if size > _MAX_BODY:
            raise BackendAuthUnavailable(
                f"The answer to the {what} is larger than {_MAX_BODY} bytes."
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BackendAuthUnavailable(f"The answer to the {what} is not valid JSON.") from None
    if not isinstance(data, dict):
        raise BackendAuthUnavailable(f"The answer to the {what} is not a JSON object.")
    return data


def _is_bearer_token(token: str) -> bool:
    """RFC 6750 b64token characters only: anything else could inject into a header."""
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/")
    stripped = token.rstrip("=")
    return bool(stripped) and all(ch in allowed for ch in stripped)
