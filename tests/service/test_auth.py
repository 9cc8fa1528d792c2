"""CDS client authentication: the JWT rules of CDS Hooks 2.0, attacks included.

Async code runs under ``asyncio.run``; each test builds its own authenticator (and, where a
JWKS URL is involved, its own ``httpx2.AsyncClient`` with a MockTransport) inside that loop.

No ``from __future__ import annotations`` here: FastAPI must see the real ``Annotated`` type of
the route below, whose dependency is a local variable of ``make_app``.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pydantic import ValidationError

from service.auth import (
    AuthError,
    AuthSettings,
    ClientAuthenticator,
    TrustedIssuer,
    VerifiedClient,
    build_authenticator,
    client_auth,
)

ISS = "https://ehr.example.dk"
URL = "https://cds.example.dk/cds-services/vejviser-ihd"
JWKS_URL = "https://ehr.example.dk/.well-known/jwks.json"

T = TypeVar("T")


def run(awaitable: Awaitable[T]) -> T:
    """pytest-asyncio is not a dependency; a fresh loop per call is enough here."""

    async def wrapper() -> T:
        return await awaitable

    return asyncio.run(wrapper())


@dataclass(frozen=True)
class Signer:
    """A private key, the kid it is published under and its public JWK."""

    key: Any
    kid: str
    alg: str

    @property
    def jwk(self) -> dict[str, Any]:
        public = self.key.public_key()
        algorithm = ECAlgorithm if self.alg.startswith("ES") else RSAAlgorithm
        jwk = algorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def token(self, claims: dict[str, Any], **header: Any) -> str:
        return jwt.encode(
            claims, self.key, algorithm=self.alg, headers={"kid": self.kid, "typ": "JWT", **header}
        )


@pytest.fixture(scope="module")
def ec_signer() -> Signer:
    return Signer(ec.generate_private_key(ec.SECP384R1()), "ec-1", "ES384")


@pytest.fixture(scope="module")
def rsa_signer() -> Signer:
    return Signer(rsa.generate_private_key(public_exponent=65537, key_size=2048), "rsa-1", "RS384")


@pytest.fixture
def authenticator(ec_signer: Signer, rsa_signer: Signer) -> ClientAuthenticator:
    settings = AuthSettings(
        issuers=[TrustedIssuer(iss=ISS, jwks={"keys": [ec_signer.jwk, rsa_signer.jwk]})]
    )
    return ClientAuthenticator(settings)


def claims(**changes: Any) -> dict[str, Any]:
    """Valid CDS Hooks 2.0 claims (no ``sub``); a change to None removes that claim."""
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISS,
        "aud": URL,
        "iat": now,
        "exp": now + 60,
        "jti": str(uuid.uuid4()),
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def reason(authenticator: ClientAuthenticator, header: str | None, url: str = URL) -> str:
    """The reason code of a rejection; fails the test if the token is accepted."""
    with pytest.raises(AuthError) as info:
        run(authenticator.verify(header, url))
    return info.value.reason


# --- tokens that pass -------------------------------------------------------------------------


def test_valid_es384_passes(authenticator: ClientAuthenticator, ec_signer: Signer) -> None:
    token = ec_signer.token(claims(tenant="praksis-0417"))
    client = run(authenticator.verify(f"Bearer {token}", URL))
    assert client.iss == ISS
    assert client.kid == "ec-1"
    assert client.tenant == "praksis-0417"
    assert client.jti


def test_valid_rs384_passes(authenticator: ClientAuthenticator, rsa_signer: Signer) -> None:
    client = run(authenticator.verify(f"Bearer {rsa_signer.token(claims())}", URL))
    assert client.kid == "rsa-1"
    assert client.tenant is None


def test_no_sub_claim_is_fine_and_sub_is_not_needed(
    authenticator: ClientAuthenticator, ec_signer: Signer
) -> None:
    payload = claims()
    assert "sub" not in payload
    assert run(authenticator.verify(f"Bearer {ec_signer.token(payload)}", URL)).iss == ISS


def test_aud_as_array_containing_the_url_passes(
    authenticator: ClientAuthenticator, ec_signer: Signer
) -> None:
    token = ec_signer.token(claims(aud=["https://other.example.dk/cds-services", URL]))
    assert run(authenticator.verify(f"Bearer {token}", URL)).iss == ISS


def test_bearer_scheme_is_case_insensitive(
    authenticator: ClientAuthenticator, ec_signer: Signer
) -> None:
    assert run(authenticator.verify(f"bearer {ec_signer.token(claims())}", URL)).iss == ISS


def test_expired_within_leeway_still_passes(
    authenticator: ClientAuthenticator, ec_signer: Signer
) -> None:
    now = int(time.time())
    token = ec_signer.token(claims(iat=now - 70, exp=now - 10))
    assert run(authenticator.verify(f"Bearer {token}", URL)).iss == ISS


# --- tokens that fail -------------------------------------------------------------------------


def test_missing_header_fails(authenticator: ClientAuthenticator) -> None:
    assert reason(authenticator, None) == "missing_header"
    assert reason(authenticator, "") == "missing_header"


def test_other_scheme_fails(authenticator: ClientAuthenticator, ec_signer: Signer) -> None:
    assert reason(authenticator, f"Basic {ec_signer.token(claims())}") == "not_bearer"


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer ",
        "Bearer not-a-jwt",
        "Bearer a.b",
        "Bearer a.b.c.d",
        "Bearer !!!.???.***",
        "Bearer eyJhbGciOiJFUzM4NCJ9.eyJpc3MiOiJ4In0",
        "Bearer e30.e30.e30",
        "Bearer " + "a" * 20_000 + ".b.c",
    ],
)
def test_malformed_token_fails(authenticator: ClientAuthenticator, header: str) -> None:
    assert reason(authenticator, header) in {"malformed_token", "missing_alg"}


def test_expired_fails(authenticator: ClientAuthenticator, ec_signer: Signer) -> None:
    now = int(time.time())
    token = ec_signer.token(claims(iat=now - 180, exp=now - 120))
    assert reason(authenticator, f"Bearer {token}") == "expired"


def test_iat_in_the_future_fails(authenticator: ClientAuthenticator, ec_signer: Signer) -> None:
    now = int(time.time())
    token = ec_signer.token(claims(iat=now + 120, exp=now + 180))
    assert reason(authenticator, f"Bearer {token}") == "not_yet_valid"


def test_lifetime_longer_than_the_replay_memory_fails(
    authenticator: ClientAuthenticator, ec_signer: Signer
) -> None:
    now = int(time.time())
    token = ec_signer.token(claims(iat=now, exp=now + 3600))
    assert reason(authenticator, f"Bearer {token}") == "lifetime_too_long"


def test_replayed_jti_fails(authenticator: ClientAuthenticator, ec_signer: Signer) -> None:
    token = ec_signer.token(claims())
    run(authenticator.verify(f"Bearer {token}", URL))
    assert reason(authenticator, f"Bearer {token}") == "replayed_jti"
    # A fresh token reusing the jti is a replay too, even with a new signature.
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    assert reason(authenticator, f"Bearer {ec_signer.token(claims(jti=jti))}") == "replayed_jti"


def test_a_full_replay_memory_refuses_rather_than_forgets(
    ec_signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    """Evicting a live jti would let its token be replayed; a full memory refuses new tokens."""
    settings = AuthSettings(
        replay_cache_size=2, issuers=[TrustedIssuer(iss=ISS, jwks={"keys": [ec_signer.jwk]})]
    )
    authenticator = ClientAuthenticator(settings)
    first = ec_signer.token(claims())
    run(authenticator.verify(f"Bearer {first}", URL))
    run(authenticator.verify(f"Bearer {ec_signer.token(claims())}", URL))
    with caplog.at_level(logging.WARNING, logger="service.auth"):
        assert reason(authenticator, f"Bearer {ec_signer.token(claims())}") == "replay_cache_full"
    assert "replay memory full" in caplog.text
    assert reason(authenticator, f"Bearer {first}") == "replayed_jti"  # still remembered


def test_rejected_token_does_not_burn_its_jti(
    authenticator: ClientAuthenticator, ec_signer: Signer
) -> None:
    """Only fully valid tokens are remembered, so a forgery cannot pre-empt a real jti."""
    jti = "shared-jti"
    assert reason(authenticator, f"Bearer {ec_signer.token(claims(jti=jti, aud=URL + 'x'))}")
    assert run(authenticator.verify(f"Bearer {ec_signer.token(claims(jti=jti))}", URL)).jti == jti


def test_wrong_aud_fails(authenticator: ClientAuthenticator, ec_signer: Signer) -> None:
    for aud in (
        "https://cds.example.dk/cds-services/other",
        URL + "/",
        URL.upper(),
        ["https://other.example.dk"],
    ):
        assert reason(authenticator, f"Bearer {ec_signer.token(claims(aud=aud))}") == "wrong_aud"


@pytest.mark.parametrize("missing", ["aud", "exp", "iat", "jti"])
def test_missing_required_claim_fails(
    authenticator: ClientAuthenticator, ec_signer: Signer, missing: str
) -> None:
    token = ec_signer.token(claims(**{missing: None}))
    assert reason(authenticator, f"Bearer {token}") == "missing_claim"


def test_alg_none_fails(authenticator: ClientAuthenticator) -> None:
    header = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "ec-1"}).encode())
    payload = b64(json.dumps(claims()).encode())
    assert reason(authenticator, f"Bearer {header}.{payload}.") == "forbidden_alg"
    header = b64(json.dumps({"alg": "None", "kid": "ec-1"}).encode())
    assert reason(authenticator, f"Bearer {header}.{payload}.") == "forbidden_alg"


@pytest.mark.parametrize("signer_name", ["ec_signer", "rsa_signer"])
def test_hs256_signed_with_the_public_key_fails(
    authenticator: ClientAuthenticator, request: pytest.FixtureRequest, signer_name: str
) -> None:
    """The key-confusion attack: HMAC keyed with the (public) PEM the service holds."""
    signer: Signer = request.getfixturevalue(signer_name)
    for secret in (signer.public_pem(), json.dumps(signer.jwk).encode()):
        header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": signer.kid}).encode())
        payload = b64(json.dumps(claims()).encode())
        mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        assert reason(authenticator, f"Bearer {header}.{payload}.{b64(mac)}") == "forbidden_alg"


def test_unknown_iss_fails(authenticator: ClientAuthenticator, ec_signer: Signer) -> None:
    token = ec_signer.token(claims(iss="https://evil.example.com"))
    assert reason(authenticator, f"Bearer {token}") == "untrusted_iss"
    token = ec_signer.token(claims(iss=None))
    assert reason(authenticator, f"Bearer {token}") == "untrusted_iss"


@pytest.mark.parametrize(
    ("claimed", "logged"),
    [
        ("https://evil.example.com", "'https://evil.example.com'"),
        (f"{ISS}/", f"'{ISS}/'"),  # the usual typo: the trailing slash shows
        ("https://x.example/\nreason=ok", "'https://x.example/\\nreason=ok'"),  # no forged line
        ("https://" + "a" * 300, "'https://" + "a" * 192 + "'... (308 characters)"),
        (None, "<no iss claim>"),
        (42, "<iss is not a string but int>"),
    ],
    ids=["stranger", "trailing slash", "newline", "long", "missing", "number"],
)
def test_an_untrusted_iss_is_logged_as_claimed(
    authenticator: ClientAuthenticator,
    ec_signer: Signer,
    caplog: pytest.LogCaptureFixture,
    claimed: Any,
    logged: str,
) -> None:
    """Found by QA (ops): a token from an unknown issuer was logged as 'iss=None', so an
    operator could not tell a typo in auth.issuers from a stranger. The claimed issuer (a URL,
    not a secret) is logged quoted; the token is not."""
    # signed as JWS: PyJWT will not encode a non-string iss, a client's library might
    payload = json.dumps(claims(iss=claimed)).encode()
    token = jwt.api_jws.encode(
        payload, ec_signer.key, algorithm="ES384", headers={"kid": ec_signer.kid, "typ": "JWT"}
    )
    with caplog.at_level(logging.INFO, logger="service.auth"):
        assert reason(authenticator, f"Bearer {token}") == "untrusted_iss"
    (record,) = [r for r in caplog.records if r.name == "service.auth"]
    assert record.getMessage() == f"client authentication failed: reason=untrusted_iss iss={logged}"
    assert "\n" not in record.getMessage()
    for part in token.split("."):
        assert part not in caplog.text


def test_signature_by_a_stranger_fails(authenticator: ClientAuthenticator) -> None:
    stranger = Signer(ec.generate_private_key(ec.SECP384R1()), "ec-1", "ES384")
    assert reason(authenticator, f"Bearer {stranger.token(claims())}") == "bad_signature"


def test_tampered_payload_fails(authenticator: ClientAuthenticator, ec_signer: Signer) -> None:
    header, _, signature = ec_signer.token(claims()).split(".")
    forged = b64(json.dumps(claims(tenant="someone-else")).encode())
    assert reason(authenticator, f"Bearer {header}.{forged}.{signature}") == "bad_signature"


def test_key_must_fit_the_alg(authenticator: ClientAuthenticator, rsa_signer: Signer) -> None:
    """An RS384 token naming the EC key's kid (and vice versa) never reaches verification."""
    token = rsa_signer.token(claims(), kid="ec-1")
    assert reason(authenticator, f"Bearer {token}") == "key_alg_mismatch"
    p256 = Signer(ec.generate_private_key(ec.SECP256R1()), "ec-1", "ES256")
    assert reason(authenticator, f"Bearer {p256.token(claims())}") == "key_alg_mismatch"
    # A JWK that names its algorithm is used with that one only.
    rs256 = {**rsa_signer.jwk, "alg": "RS256"}
    settings = AuthSettings(issuers=[TrustedIssuer(iss=ISS, jwks={"keys": [rs256]})])
    token = rsa_signer.token(claims())
    assert reason(ClientAuthenticator(settings), f"Bearer {token}") == "key_alg_mismatch"


def test_a_token_without_typ_passes(authenticator: ClientAuthenticator, ec_signer: Signer) -> None:
    """``typ`` is optional in JWS; only a wrong one is refused."""
    token = jwt.encode(
        claims(), ec_signer.key, algorithm="ES384", headers={"kid": "ec-1", "typ": None}
    )
    assert "typ" not in jwt.get_unverified_header(token)
    assert run(authenticator.verify(f"Bearer {token}", URL)).kid == "ec-1"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        # a numeric string: PyJWT takes it, we do not
        (lambda now: {"iat": str(now)}, "bad_time_claim"),
        (lambda now: {"iat": True}, "bad_time_claim"),  # a bool is an int to Python and PyJWT
        (lambda now: {"iat": now, "exp": now}, "bad_time_claim"),  # no lifetime at all
        (lambda now: {"jti": ""}, "bad_jti"),
        (lambda now: {"tenant": 417}, "bad_tenant"),
        (lambda now: {"tenant": ["praksis-0417"]}, "bad_tenant"),
    ],
    ids=[
        "iat a string",
        "iat a bool",
        "exp = iat",
        "empty jti",
        "tenant a number",
        "tenant a list",
    ],
)
def test_claims_of_the_wrong_type_fail(
    authenticator: ClientAuthenticator,
    ec_signer: Signer,
    changes: Callable[[int], dict[str, Any]],
    expected: str,
) -> None:
    """What PyJWT lets through: times that are not numbers, an empty jti, a tenant that is not a
    string (it names the practice the call is for)."""
    token = ec_signer.token(claims(**changes(int(time.time()))))
    assert reason(authenticator, f"Bearer {token}") == expected


@pytest.mark.parametrize(
    "restriction",
    [{"use": "enc"}, {"key_ops": ["encrypt"]}, {"key_ops": "verify"}, {"key_ops": []}],
)
def test_a_key_published_for_something_else_fails(
    ec_signer: Signer, restriction: dict[str, Any]
) -> None:
    """A JWK's ``use`` / ``key_ops`` are its owner's word on what it may do; verify must be in it."""
    jwk = {**ec_signer.jwk, **restriction}
    if "key_ops" in restriction:
        del jwk["use"]
    settings = AuthSettings(issuers=[TrustedIssuer(iss=ISS, jwks={"keys": [jwk]})])
    token = ec_signer.token(claims())
    assert reason(ClientAuthenticator(settings), f"Bearer {token}") == "key_not_for_signing"
    allowed = {**jwk, "key_ops": ["verify"]}
    settings = AuthSettings(issuers=[TrustedIssuer(iss=ISS, jwks={"keys": [allowed]})])
    if allowed.get("use", "sig") == "sig":
        assert run(ClientAuthenticator(settings).verify(f"Bearer {token}", URL)).kid == "ec-1"


def test_header_rules(authenticator: ClientAuthenticator, ec_signer: Signer) -> None:
    assert reason(authenticator, f"Bearer {ec_signer.token(claims(), typ='at+jwt')}") == "bad_typ"
    no_kid = jwt.encode(claims(), ec_signer.key, algorithm="ES384")
    assert reason(authenticator, f"Bearer {no_kid}") == "missing_kid"
    assert reason(authenticator, f"Bearer {ec_signer.token(claims(), kid='nope')}") == (
        "unknown_kid"
    )


def test_short_rsa_key_fails() -> None:
    weak = Signer(rsa.generate_private_key(public_exponent=65537, key_size=1024), "w", "RS384")
    settings = AuthSettings(issuers=[TrustedIssuer(iss=ISS, jwks={"keys": [weak.jwk]})])
    authenticator = ClientAuthenticator(settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT warns when signing with the weak key
        token = weak.token(claims())
    assert reason(authenticator, f"Bearer {token}") == "bad_key"


def test_configured_algorithms_narrow_the_accepted_set(
    ec_signer: Signer, rsa_signer: Signer
) -> None:
    settings = AuthSettings(
        algorithms=["ES384"],
        issuers=[TrustedIssuer(iss=ISS, jwks={"keys": [ec_signer.jwk, rsa_signer.jwk]})],
    )
    authenticator = ClientAuthenticator(settings)
    assert run(authenticator.verify(f"Bearer {ec_signer.token(claims())}", URL)).kid == "ec-1"
    assert reason(authenticator, f"Bearer {rsa_signer.token(claims())}") == "unsupported_alg"


# --- configuration ----------------------------------------------------------------------------


def test_settings_refuse_hmac_none_and_ambiguous_issuers(ec_signer: Signer) -> None:
    for algorithms in (["HS256"], ["none"], ["ES384", "HS512"], []):
        with pytest.raises(ValidationError):
            AuthSettings(algorithms=algorithms)
    with pytest.raises(ValidationError):
        TrustedIssuer(iss=ISS)  # neither key source
    with pytest.raises(ValidationError):
        TrustedIssuer(iss=ISS, jwks_url=JWKS_URL, jwks={"keys": [ec_signer.jwk]})
    with pytest.raises(ValidationError):
        TrustedIssuer(iss=ISS, jwks_url="http://ehr.example.dk/jwks.json")
    with pytest.raises(ValidationError):
        TrustedIssuer(iss=ISS, jwks={"keys": [{"kty": "oct", "kid": "x", "k": "c2VjcmV0"}]})
    with pytest.raises(ValidationError):
        AuthSettings(
            issuers=[
                TrustedIssuer(iss=ISS, jwks={"keys": [ec_signer.jwk]}),
                TrustedIssuer(iss=ISS, jwks_url=JWKS_URL),
            ]
        )


def test_settings_refuse_key_sets_and_urls_that_cannot_work(ec_signer: Signer) -> None:
    """Mistakes in the configuration are found at start-up, not on a GP's first call."""
    for jwks in ({"keys": []}, {"keys": "x"}, {"keys": [{**ec_signer.jwk, "kid": ""}]}, {}):
        with pytest.raises(ValidationError, match="jwks"):
            TrustedIssuer(iss=ISS, jwks=jwks)
    for url in ("ftp://ehr.example.dk/jwks.json", "https:///jwks.json", "http://10.0.0.1/jwks"):
        with pytest.raises(ValidationError, match="https"):
            TrustedIssuer(iss=ISS, jwks_url=url)
    local = "http://localhost:8081/jwks.json"  # a test EHR on the same machine
    assert TrustedIssuer(iss=ISS, jwks_url=local).jwks_url == local
    for base in ("cds.example.dk", "ftp://cds.example.dk", "https://cds.example.dk/?x=1"):
        with pytest.raises(ValidationError, match="public_base_url"):
            AuthSettings(public_base_url=base)
    assert AuthSettings(public_base_url="https://cds.example.dk/").public_base_url == (
        "https://cds.example.dk"
    )


def test_build_authenticator() -> None:
    assert build_authenticator(AuthSettings(enabled=False), None) is None
    with pytest.raises(ValueError, match="no trusted issuers"):
        build_authenticator(AuthSettings(), None)
    with pytest.raises(ValueError, match="httpx2"):
        build_authenticator(AuthSettings(issuers=[TrustedIssuer(iss=ISS, jwks_url=JWKS_URL)]), None)


# --- JWKS fetched from a URL ------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class JwksServer:
    """A MockTransport handler serving a mutable JWK Set and counting fetches."""

    def __init__(self, *keys: dict[str, Any]) -> None:
        self.keys = list(keys)
        self.fetches = 0
        self.status = 200

    async def __call__(self, request: httpx2.Request) -> httpx2.Response:
        assert str(request.url) == JWKS_URL
        self.fetches += 1
        await asyncio.sleep(0)  # let concurrent verifications interleave
        return httpx2.Response(self.status, json={"keys": self.keys})


def url_settings(**changes: Any) -> AuthSettings:
    return AuthSettings(issuers=[TrustedIssuer(iss=ISS, jwks_url=JWKS_URL)], **changes)


def test_unknown_kid_triggers_one_refresh_then_passes(ec_signer: Signer) -> None:
    rotated = Signer(ec.generate_private_key(ec.SECP384R1()), "ec-2", "ES384")
    server = JwksServer(ec_signer.jwk)
    clock = FakeClock()

    async def scenario() -> None:
        async with httpx2.AsyncClient(transport=httpx2.MockTransport(server)) as http:
            authenticator = ClientAuthenticator(url_settings(), http, monotonic=clock)
            await authenticator.verify(f"Bearer {ec_signer.token(claims())}", URL)
            await authenticator.verify(f"Bearer {ec_signer.token(claims())}", URL)
            assert server.fetches == 1  # cached

            server.keys.append(rotated.jwk)  # the client rotates its key
            clock.now += 31
            tokens = [rotated.token(claims()) for _ in range(5)]
            results = await asyncio.gather(
                *(authenticator.verify(f"Bearer {token}", URL) for token in tokens)
            )
            assert {client.kid for client in results} == {"ec-2"}
            assert server.fetches == 2  # one refresh for the whole burst

            # Invented kids right after a refresh do not reach the client's JWKS endpoint.
            for kid in ("x1", "x2", "x3"):
                with pytest.raises(AuthError) as info:
                    await authenticator.verify(f"Bearer {ec_signer.token(claims(), kid=kid)}", URL)
                assert info.value.reason == "unknown_kid"
                assert info.value.iss == ISS
            assert server.fetches == 2

    run(scenario())


def test_refresh_is_rate_limited_per_issuer(ec_signer: Signer) -> None:
    rotated = Signer(ec.generate_private_key(ec.SECP384R1()), "ec-2", "ES384")
    server = JwksServer(ec_signer.jwk)
    clock = FakeClock()

    async def scenario() -> None:
        async with httpx2.AsyncClient(transport=httpx2.MockTransport(server)) as http:
            authenticator = ClientAuthenticator(url_settings(), http, monotonic=clock)
            await authenticator.verify(f"Bearer {ec_signer.token(claims())}", URL)
            server.keys.append(rotated.jwk)
            clock.now += 5  # too soon after the last fetch
            with pytest.raises(AuthError, match="unknown_kid"):
                await authenticator.verify(f"Bearer {rotated.token(claims())}", URL)
            assert server.fetches == 1
            clock.now += 30
            assert (await authenticator.verify(f"Bearer {rotated.token(claims())}", URL)).kid
            assert server.fetches == 2

    run(scenario())


def test_jwks_outage_fails_closed(ec_signer: Signer) -> None:
    server = JwksServer(ec_signer.jwk)
    server.status = 503
    clock = FakeClock()

    async def scenario() -> None:
        async with httpx2.AsyncClient(transport=httpx2.MockTransport(server)) as http:
            authenticator = ClientAuthenticator(url_settings(), http, monotonic=clock)
            for _ in range(3):
                with pytest.raises(AuthError, match="jwks_unavailable"):
                    await authenticator.verify(f"Bearer {ec_signer.token(claims())}", URL)
            assert server.fetches == 1  # no hammering of a failing endpoint
            server.status = 200
            clock.now += 31
            assert (await authenticator.verify(f"Bearer {ec_signer.token(claims())}", URL)).kid

    run(scenario())


@pytest.mark.parametrize(
    "answer",
    [
        httpx2.Response(200, json=[]),
        httpx2.Response(200, json={"keys": "none"}),
        httpx2.Response(200, content=b"<html>login</html>"),
        httpx2.Response(200, content=b'{"keys": [' + b" " * 1_048_576 + b"]}"),
        httpx2.Response(302, headers={"Location": "https://elsewhere.example/jwks.json"}),
    ],
    ids=["a list", "keys not a list", "not JSON", "over 1 MB", "a redirect"],
)
def test_an_unusable_jwks_answer_fails_closed(ec_signer: Signer, answer: httpx2.Response) -> None:
    async def handler(request: httpx2.Request) -> httpx2.Response:
        return answer

    async def scenario() -> None:
        async with httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) as http:
            authenticator = ClientAuthenticator(url_settings(), http)
            with pytest.raises(AuthError, match="jwks_unavailable"):
                await authenticator.verify(f"Bearer {ec_signer.token(claims())}", URL)

    run(scenario())


# --- the FastAPI dependency -------------------------------------------------------------------


def make_app(authenticator: ClientAuthenticator | None) -> FastAPI:
    app = FastAPI()
    require_client = client_auth(authenticator)

    @app.post("/cds-services/vejviser-ihd")
    async def call(
        client: Annotated[VerifiedClient | None, Depends(require_client)],
    ) -> dict[str, str | None]:
        return {"iss": client.iss if client else None}

    return app


def test_dependency_401_has_no_detail_and_logs_no_token(
    authenticator: ClientAuthenticator, ec_signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = TestClient(make_app(authenticator))
    local_url = "http://testserver/cds-services/vejviser-ihd"

    good = ec_signer.token(claims(aud=local_url))
    response = client.post(
        "/cds-services/vejviser-ihd?x=1", headers={"Authorization": f"Bearer {good}"}
    )
    assert response.status_code == 200
    assert response.json() == {"iss": ISS}

    bad_tokens = [
        ec_signer.token(claims()),  # aud is the public URL, not this one
        ec_signer.token(
            claims(aud=local_url, exp=int(time.time()) - 600, iat=int(time.time()) - 660)
        ),
        good,  # replay
    ]
    for token in bad_tokens:
        response = client.post(
            "/cds-services/vejviser-ihd", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json() == {"detail": "Unauthorized"}
        assert "aud" not in response.text and "exp" not in response.text

    response = client.post("/cds-services/vejviser-ihd")
    assert response.status_code == 401
    assert response.json() == {"detail": "Unauthorized"}

    logged = caplog.text + "".join(str(record.args) for record in caplog.records)
    assert "reason=wrong_aud" in logged and "reason=replayed_jti" in logged
    for token in [good, *bad_tokens]:
        assert token not in logged
        for part in token.split("."):
            assert part not in logged
        for value in jwt.decode(token, options={"verify_signature": False}).values():
            if value not in (ISS, local_url, URL):
                assert str(value) not in logged


def test_dependency_uses_public_base_url(ec_signer: Signer) -> None:
    """Behind a proxy, aud is the public URL, whatever Host the proxy forwards."""
    settings = AuthSettings(
        public_base_url="https://cds.example.dk/",
        issuers=[TrustedIssuer(iss=ISS, jwks={"keys": [ec_signer.jwk]})],
    )
    client = TestClient(make_app(ClientAuthenticator(settings)))
    response = client.post(
        "/cds-services/vejviser-ihd?debug=1",
        headers={"Authorization": f"Bearer {ec_signer.token(claims())}"},
    )
    assert response.status_code == 200
    local = ec_signer.token(claims(aud="http://testserver/cds-services/vejviser-ihd"))
    response = client.post(
        "/cds-services/vejviser-ihd", headers={"Authorization": f"Bearer {local}"}
    )
    assert response.status_code == 401


def test_dependency_with_auth_disabled_yields_none() -> None:
    response = TestClient(make_app(None)).post("/cds-services/vejviser-ihd")
    assert response.status_code == 200
    assert response.json() == {"iss": None}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"x": "abc"}, "jwks key 'ec-1' is not a usable key: Coords should be 48 bytes"),
        ({"y": None}, "jwks key 'ec-1' is not a usable key"),
        ({"crv": "P-999"}, "jwks key 'ec-1' is not a usable key: Unsupported crv"),
        ({"d": "c2VjcmV0"}, "jwks key 'ec-1' is a private key: give the public key only"),
    ],
    ids=["short coordinate", "missing coordinate", "unknown curve", "private key"],
)
def test_a_static_key_that_cannot_verify_is_refused_at_start_up(
    ec_signer: Signer, change: dict[str, Any], message: str
) -> None:
    """Found by QA (ops): a mis-pasted key (a coordinate cut short, one left out) started the
    service and refused every token as bad_key; a pasted private key was taken as well."""
    key = {k: v for k, v in {**ec_signer.jwk, **change}.items() if v is not None}
    with pytest.raises(ValidationError, match=re.escape(message)):
        TrustedIssuer(iss=ISS, jwks={"keys": [key]})


def test_a_wrong_aud_is_logged_with_the_url_it_had_to_name(
    authenticator: ClientAuthenticator, ec_signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by QA (ops): behind a proxy 'reason=wrong_aud' did not say which URL the service
    expected (http:// where the EHR calls https://, a stripped prefix), so the fix was guesswork."""
    token = ec_signer.token(claims(aud="https://cds.example.dk/cds-services/vejviser-ihd"))
    with caplog.at_level(logging.INFO, logger="service.auth"):
        reason(
            authenticator, f"Bearer {token}", url="http://cds.example.dk/cds-services/vejviser-ihd"
        )
    assert caplog.records[-1].getMessage() == (
        f"client authentication failed: reason=wrong_aud iss={ISS} "
        "expected_aud=http://cds.example.dk/cds-services/vejviser-ihd"
    )
