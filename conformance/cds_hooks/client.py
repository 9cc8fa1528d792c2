"""HTTP to the service under test, signed as a CDS Client, every exchange kept for the report.

Each request carries a fresh JWT when the suite was given the client's private key: its ``aud``
is the exact URL called and its ``jti`` is new, so ordinary checks never trip the replay or
audience rules that the ``jwt.*`` checks probe on purpose. Every exchange is recorded so a
failing check can quote the response that failed it, and so suite-wide checks (error bodies,
latency) can look back at all of them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

SNIPPET_CHARS = 400

_CURVE_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}

Authorization = str | None
"""``"auto"`` (a fresh valid JWT when a signer is configured), None (no header) or a token."""


class SigningKeyError(ValueError):
    """The private key cannot sign CDS Hooks JWTs; the message says why."""


@dataclass(frozen=True, slots=True)
class Signer:
    """The CDS Client's signing key, as the service under test knows it (``kid`` under ``iss``)."""

    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    kid: str
    iss: str

    @classmethod
    def from_pem(cls, path: Path, kid: str, iss: str) -> Signer:
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except OSError as exc:
            raise SigningKeyError(f"cannot read {path}: {exc.strerror}") from None
        except (ValueError, TypeError) as exc:
            raise SigningKeyError(f"{path} is not an unencrypted PEM private key: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise SigningKeyError(f"{path}: CDS Hooks JWTs are signed with EC or RSA keys")
        signer = cls(key, kid, iss)
        signer.alg  # noqa: B018 (fail now on an unsupported curve, not mid-suite)
        return signer

    @property
    def alg(self) -> str:
        """ES384 for a P-384 key, as CDS Hooks recommends; RS384 for RSA."""
        if isinstance(self.key, rsa.RSAPrivateKey):
            return "RS384"
        alg = _CURVE_ALGORITHMS.get(self.key.curve.name)
        if alg is None:
            raise SigningKeyError(f"unsupported EC curve {self.key.curve.name}")
        return alg

    def claims(self, aud: str | list[str], **changes: Any) -> dict[str, Any]:
        """CDS Hooks 2.0 claims (no ``sub``: 2.0 has none); a change to None drops a claim."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.iss,
            "aud": aud,
            "iat": now,
            "exp": now + 60,
            "jti": str(uuid.uuid4()),
        }
        claims.update(changes)
        return {name: value for name, value in claims.items() if value is not None}

    def token(self, aud: str | list[str], **changes: Any) -> str:
        return jwt.encode(
            self.claims(aud, **changes),
            self.key,
            algorithm=self.alg,
            headers={"kid": self.kid, "typ": "JWT"},
        )

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def impostor(self) -> Signer:
        """A fresh key of the same kind under the same kid and iss: its signatures must fail."""
        key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
        if isinstance(self.key, rsa.RSAPrivateKey):
            key = rsa.generate_private_key(public_exponent=65537, key_size=self.key.key_size)
        else:
            key = ec.generate_private_key(self.key.curve)
        return Signer(key, self.kid, self.iss)

    def unsigned(self, aud: str) -> str:
        """``alg: none``: valid claims, no signature."""
        return _compact({"alg": "none", "typ": "JWT", "kid": self.kid}, self.claims(aud), b"")

    def hmac_with_public_key(self, aud: str) -> str:
        """HS256 keyed with our *public* key's PEM: the classic key-confusion forgery."""
        header = {"alg": "HS256", "typ": "JWT", "kid": self.kid}
        signing_input = f"{_b64_json(header)}.{_b64_json(self.claims(aud))}".encode()
        signature = hmac.new(self.public_pem(), signing_input, hashlib.sha256).digest()
        return f"{signing_input.decode()}.{_b64(signature)}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64_json(value: Mapping[str, Any]) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def _compact(header: Mapping[str, Any], claims: Mapping[str, Any], signature: bytes) -> str:
    return f"{_b64_json(header)}.{_b64_json(claims)}.{_b64(signature)}"


@dataclass(slots=True)
class Exchange:
    """One request and its response (or the transport error that replaced it)."""

    check: str
    method: str
    url: str
    status: int | None
    headers: httpx2.Headers
    body: bytes
    elapsed: float
    error: str | None = None

    def json(self) -> Any:
        """The parsed body, or None when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def snippet(self) -> str:
        """The response in one line, shortened: what a failing check quotes."""
        if self.error is not None:
            return f"{self.method} {self.url}: {self.error}"
        text = self.body.decode("utf-8", errors="replace").replace("\n", " ")
        if len(text) > SNIPPET_CHARS:
            text = text[:SNIPPET_CHARS] + "…"
        return f"{self.method} {self.url} -> HTTP {self.status} {text}".rstrip()


@dataclass
class ServiceClient:
    """A synchronous client for one CDS Hooks base URL; closes with the suite."""

    base_url: str
    signer: Signer | None = None
    timeout: float = 10.0
    exchanges: list[Exchange] = field(default_factory=list)
    current_check: str = ""
    _http: httpx2.Client = field(init=False)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        self._http = httpx2.Client(timeout=httpx2.Timeout(self.timeout), follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        authorization: Authorization = "auto",
    ) -> Exchange:
        """Send one request; transport errors become an Exchange with ``status=None``."""
        url = self.url(path)
        sent = dict(headers or {})
        if authorization == "auto":
            if self.signer is not None:
                sent["Authorization"] = f"Bearer {self.signer.token(url)}"
        elif authorization is not None:
            sent["Authorization"] = f"Bearer {authorization}"
        if json_body is not None:
            content = json.dumps(json_body).encode()
            sent.setdefault("Content-Type", "application/json")
        started = time.perf_counter()
        try:
            response = self._http.request(method, url, content=content, headers=sent)
        except httpx2.HTTPError as exc:
            exchange = Exchange(
                self.current_check,
                method,
                url,
                None,
                httpx2.Headers(),
                b"",
                time.perf_counter() - started,
                error=f"{type(exc).__name__}: {exc}",
            )
        else:
            exchange = Exchange(
                self.current_check,
                method,
                url,
                response.status_code,
                response.headers,
                response.content,
                time.perf_counter() - started,
            )
        self.exchanges.append(exchange)
        return exchange

    def get(self, path: str, **kwargs: Any) -> Exchange:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Exchange:
        return self.request("POST", path, json_body=body, **kwargs)
