"""SMART Backend Services against a real authorisation server (sekmet's SMART variant), plus
httpx2 MockTransport for answers sekmet does not give on cue (plain-http token endpoint, 500s,
malformed token responses)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from fhir_adapter.backend_auth import (
    ASSERTION_TYPE,
    BackendAuthRejected,
    BackendAuthTimeout,
    BackendAuthUnavailable,
    BackendServicesAuth,
    client_assertion,
    key_id,
    load_private_key,
    public_jwks,
)
from fhir_adapter.rest import FhirTimeout
from tests.support.sekmet import SekmetServer, free_port, running

EC_CLIENT = "vejviser-es384"
RSA_CLIENT = "vejviser-rs384"
MOCK_BASE = "https://fhir.example.dk/fhir"
MOCK_TOKEN_URL = "https://auth.example.dk/token"


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def smart_server(
    tmp_path_factory: pytest.TempPathFactory,
    ec_key: ec.EllipticCurvePrivateKey,
    rsa_key: rsa.RSAPrivateKey,
) -> Iterator[SekmetServer]:
    """sekmet with SMART Backend Services only; both clients may read (``system/*.rs``)."""
    server = SekmetServer(
        tmp_path_factory.mktemp("sekmet-smart"),
        server_auth={
            "types": ["smart"],
            "smart_clients": [
                {"client_id": EC_CLIENT, "jwks": public_jwks(ec_key), "scopes": "system/*.rs"},
                {"client_id": RSA_CLIENT, "jwks": public_jwks(rsa_key), "scopes": "system/*.rs"},
            ],
        },
    )
    with running(server):
        yield server


class Recorder:
    """An httpx2 request hook that keeps every request sent (to inspect forms and count calls)."""

    def __init__(self) -> None:
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> None:
        request.read()
        self.requests.append(request)

    def token_requests(self) -> list[dict[str, str]]:
        return [
            {k: v[0] for k, v in parse_qs(r.content.decode()).items()}
            for r in self.requests
            if r.method == "POST" and r.url.path.endswith("/auth/token")
        ]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def http(recorder: Recorder) -> Iterator[httpx2.Client]:
    with httpx2.Client(event_hooks={"request": [recorder]}) as client:
        yield client


def make_auth(
    http: httpx2.Client,
    server: SekmetServer,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    client_id: str = EC_CLIENT,
    **options: Any,
) -> BackendServicesAuth:
    return BackendServicesAuth(
        http,
        fhir_base_url=server.base_url,
        client_id=client_id,
        private_key=key,
        **options,
    )


# --- against sekmet ---------------------------------------------------------------------------


def test_discovers_the_token_endpoint(
    http: httpx2.Client, smart_server: SekmetServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    auth = make_auth(http, smart_server, ec_key)
    assert auth.token_endpoint() == f"http://127.0.0.1:{smart_server.port}/auth/token"


@pytest.mark.parametrize("which", ["ec", "rsa"])
def test_token_opens_the_fhir_server(
    which: str,
    http: httpx2.Client,
    smart_server: SekmetServer,
    ec_key: ec.EllipticCurvePrivateKey,
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    key, client_id = (ec_key, EC_CLIENT) if which == "ec" else (rsa_key, RSA_CLIENT)
    auth = make_auth(http, smart_server, key, client_id)
    assert auth.algorithm == ("ES384" if which == "ec" else "RS384")
    token = auth.access_token()
    url = f"{smart_server.base_url}/Patient"
    assert http.get(url).status_code == 401
    answer = http.get(url, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200
    assert auth.granted_scope == "system/*.rs"


def test_assertion_has_the_smart_claims(
    http: httpx2.Client,
    recorder: Recorder,
    smart_server: SekmetServer,
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    auth = make_auth(http, smart_server, ec_key)
    before = time.time()
    auth.access_token()
    auth.invalidate()
    auth.access_token()
    after = time.time()
    forms = recorder.token_requests()
    assert len(forms) == 2
    token_url = auth.token_endpoint()
    jtis = set()
    for form in forms:
        assert form["grant_type"] == "client_credentials"
        assert form["client_assertion_type"] == ASSERTION_TYPE
        assert form["scope"] == "system/*.rs"
        assertion = form["client_assertion"]
        header = jwt.get_unverified_header(assertion)
        assert header == {"alg": "ES384", "kid": key_id(ec_key), "typ": "JWT"}
        claims = jwt.decode(
            assertion,
            ec_key.public_key(),
            algorithms=["ES384"],
            audience=token_url,
        )
        assert claims["iss"] == claims["sub"] == EC_CLIENT
        assert claims["aud"] == token_url
        assert after < claims["exp"] <= int(before) + 300
        jtis.add(claims["jti"])
    assert len(jtis) == 2


def test_token_is_cached_until_shortly_before_expiry(
    http: httpx2.Client,
    recorder: Recorder,
    smart_server: SekmetServer,
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    now = [5000.0]
    auth = make_auth(http, smart_server, ec_key, clock=lambda: now[0], refresh_margin=60)
    first = auth.access_token()
    now[0] += 3600 - 61  # sekmet's tokens live 3600 s: still a minute and more to go
    assert auth.access_token() == first
    assert len(recorder.token_requests()) == 1
    now[0] += 2  # within the refresh margin: a new token
    second = auth.access_token()
    assert len(recorder.token_requests()) == 2
    assert second != first
    auth.invalidate()
    auth.access_token()
    assert len(recorder.token_requests()) == 3


def test_unknown_client_is_rejected(
    http: httpx2.Client,
    recorder: Recorder,
    smart_server: SekmetServer,
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    auth = make_auth(http, smart_server, ec_key, client_id="nobody")
    with pytest.raises(BackendAuthRejected) as caught:
        auth.access_token()
    assert caught.value.error == "invalid_client"
    assert caught.value.status == 401
    assertion = recorder.token_requests()[0]["client_assertion"]
    assert assertion not in str(caught.value)
    assert assertion not in (caught.value.diagnostics or "")


def test_key_not_registered_is_rejected(http: httpx2.Client, smart_server: SekmetServer) -> None:
    stranger = ec.generate_private_key(ec.SECP384R1())
    auth = make_auth(http, smart_server, stranger)
    with pytest.raises(BackendAuthRejected) as caught:
        auth.access_token()
    assert caught.value.error == "invalid_client"


def test_scope_beyond_the_registration_is_rejected(
    http: httpx2.Client, smart_server: SekmetServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    auth = make_auth(http, smart_server, ec_key, scope="system/*.cruds")
    with pytest.raises(BackendAuthRejected) as caught:
        auth.access_token()
    assert caught.value.error == "invalid_scope"


def test_neither_token_nor_assertion_is_logged(
    http: httpx2.Client,
    recorder: Recorder,
    smart_server: SekmetServer,
    ec_key: ec.EllipticCurvePrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    auth = make_auth(http, smart_server, ec_key)
    token = auth.access_token()
    assertion = recorder.token_requests()[0]["client_assertion"]
    assert caplog.records  # something was logged ...
    assert token not in caplog.text  # ... but not the secrets
    assert assertion not in caplog.text
    assert token not in repr(auth)


def test_unreachable_server_is_unavailable(
    http: httpx2.Client, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    auth = BackendServicesAuth(
        http,
        fhir_base_url=f"http://127.0.0.1:{free_port()}/fhir",
        client_id=EC_CLIENT,
        private_key=ec_key,
    )
    with pytest.raises(BackendAuthUnavailable, match="could not be reached"):
        auth.access_token()


# --- MockTransport: answers sekmet does not give ----------------------------------------------


TOKEN = {"access_token": "abc.def", "token_type": "bearer"}


def mock_client(handler: Callable[[httpx2.Request], httpx2.Response]) -> httpx2.Client:
    return httpx2.Client(transport=httpx2.MockTransport(handler))


def smart_config(**overrides: Any) -> dict[str, Any]:
    return {
        "token_endpoint": MOCK_TOKEN_URL,
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "grant_types_supported": ["client_credentials"],
        **overrides,
    }


def scripted(
    token_answer: httpx2.Response, config: dict[str, Any] | None = None
) -> Callable[[httpx2.Request], httpx2.Response]:
    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.path.endswith("/.well-known/smart-configuration"):
            return httpx2.Response(200, json=config or smart_config())
        assert str(request.url) == MOCK_TOKEN_URL
        return token_answer

    return handler


def mock_auth(
    handler: Callable[[httpx2.Request], httpx2.Response],
    key: ec.EllipticCurvePrivateKey,
    **options: Any,
) -> BackendServicesAuth:
    return BackendServicesAuth(
        mock_client(handler),
        fhir_base_url=MOCK_BASE,
        private_key=key,
        **{"client_id": EC_CLIENT, **options},
    )


def test_plain_http_token_endpoint_refused_for_https_server(
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    config = smart_config(token_endpoint="http://auth.example.dk/token")
    auth = mock_auth(scripted(httpx2.Response(500), config), ec_key)
    with pytest.raises(BackendAuthRejected, match="plain-http"):
        auth.access_token()


def test_server_without_private_key_jwt_refused(ec_key: ec.EllipticCurvePrivateKey) -> None:
    config = smart_config(token_endpoint_auth_methods_supported=["client_secret_basic"])
    auth = mock_auth(scripted(httpx2.Response(500), config), ec_key)
    with pytest.raises(BackendAuthRejected, match="private_key_jwt"):
        auth.access_token()


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (httpx2.Response(500, json={"error": "server_error"}), "HTTP 500"),
        (httpx2.Response(200, text="<html>"), "not valid JSON"),
        (httpx2.Response(200, json={"token_type": "bearer", "expires_in": 60}), "no access_token"),
        (httpx2.Response(200, json={"access_token": "a b", "token_type": "bearer"}), "bearer"),
        (httpx2.Response(200, json={"access_token": "abc", "token_type": "mac"}), "token_type"),
        (httpx2.Response(302, headers={"Location": "https://elsewhere.example/"}), "HTTP 302"),
        (httpx2.Response(200, json=["abc"]), "not a JSON object"),
        (httpx2.Response(200, content=b'{"access_token": "' + b"a" * 300_000 + b'"}'), "larger"),
        (httpx2.Response(200, json={**TOKEN, "expires_in": "300"}), "expires_in is not a number"),
        (httpx2.Response(200, json={**TOKEN, "expires_in": True}), "expires_in is not a number"),
        (httpx2.Response(200, json={**TOKEN, "expires_in": 0}), "expires_in is not positive"),
    ],
)
def test_unusable_token_answers(
    answer: httpx2.Response, message: str, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    with pytest.raises(BackendAuthUnavailable, match=message):
        mock_auth(scripted(answer), ec_key).access_token()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (smart_config(token_endpoint=None), "no token_endpoint"),
        (smart_config(token_endpoint=""), "no token_endpoint"),
        (smart_config(token_endpoint="auth.example.dk/token"), "not an absolute http"),
        (["not", "an", "object"], "not a JSON object"),
    ],
)
def test_unusable_smart_configurations(
    config: Any, message: str, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.url.path.endswith("/.well-known/smart-configuration"), "no token request"
        return httpx2.Response(200, json=config)

    with pytest.raises(BackendAuthUnavailable, match=message):
        mock_auth(handler, ec_key).access_token()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"client_id": ""}, "client_id"),
        ({"scope": "  "}, "scope"),
        ({"assertion_lifetime": 0}, "assertion_lifetime"),
        ({"assertion_lifetime": 301}, "assertion_lifetime"),
        ({"algorithm": "RS384"}, "cannot sign RS384"),
    ],
)
def test_client_settings_are_checked(
    options: dict[str, Any], message: str, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    with pytest.raises(ValueError, match=message):
        mock_auth(lambda r: httpx2.Response(500), ec_key, **options)


def test_keys_of_other_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="RSA \\(RS384\\) or EC P-384"):
        load_private_key(_pem(ed25519.Ed25519PrivateKey.generate()).decode())


def test_missing_expires_in_assumes_five_minutes(ec_key: ec.EllipticCurvePrivateKey) -> None:
    now = [0.0]
    answer = httpx2.Response(200, json={"access_token": "abc.def", "token_type": "Bearer"})
    auth = mock_auth(scripted(answer), ec_key, clock=lambda: now[0], refresh_margin=60)
    assert auth.access_token() == "abc.def"
    now[0] = 239.0
    assert auth.access_token() == "abc.def"


def test_spent_budget_is_a_timeout(ec_key: ec.EllipticCurvePrivateKey) -> None:
    auth = mock_auth(scripted(httpx2.Response(500)), ec_key, clock=lambda: 100.0)
    with pytest.raises(BackendAuthTimeout) as caught:
        auth.access_token(deadline=99.0)
    assert isinstance(caught.value, FhirTimeout)


def test_client_assertion_lifetime_is_capped(ec_key: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(ValueError, match="lifetime"):
        client_assertion(client_id="c", token_url=MOCK_TOKEN_URL, key=ec_key, kid="k", lifetime=301)


def test_keys_must_be_rs384_or_es384_capable(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="P-384"):
        load_private_key(_pem(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(ValueError, match="2048"):
        load_private_key(_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)))
    with pytest.raises(ValueError, match="PEM"):
        load_private_key(b"not a key")
    key = ec.generate_private_key(ec.SECP384R1())
    path = tmp_path / "client.pem"
    path.write_bytes(_pem(key))
    loaded = load_private_key(path)
    assert key_id(loaded) == key_id(key)
    jwk = public_jwks(key)["keys"][0]
    assert jwk["kty"] == "EC" and jwk["crv"] == "P-384" and jwk["alg"] == "ES384"
    assert "d" not in jwk  # public part only


def _pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class Trickle(httpx2.SyncByteStream):
    """A body sent a byte at a time, two seconds apart on the clock ``now``."""

    def __init__(self, data: bytes, now: list[float]) -> None:
        self.data, self.now = data, now

    def __iter__(self) -> Iterator[bytes]:
        for byte in self.data:
            self.now[0] += 2.0
            yield bytes([byte])


@pytest.mark.parametrize("slow", ["discovery", "token"])
def test_a_trickling_answer_cannot_outlast_the_budget(
    slow: str, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    """Each byte came within the read timeout, so the whole answer (minutes) was waited for."""
    now = [0.0]

    def handler(request: httpx2.Request) -> httpx2.Response:
        discovery = request.url.path.endswith("/.well-known/smart-configuration")
        body = json.dumps(smart_config() if discovery else TOKEN).encode()
        if discovery == (slow == "discovery"):
            return httpx2.Response(200, stream=Trickle(body, now))
        return httpx2.Response(200, content=body)

    auth = mock_auth(handler, ec_key, clock=lambda: now[0])
    with pytest.raises(BackendAuthTimeout):
        auth.access_token(deadline=30.0)
    assert now[0] <= 12.0  # the request timeout (10 s), not the body's length
