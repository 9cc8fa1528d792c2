"""Request ids: every answer names one, and every log line written for the request carries it."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from service.app import create_app
from service.auth import AuthSettings, TrustedIssuer
from service.guideline_source import SERVICE_LOGGERS, configure_logging
from service.settings import Settings


@contextlib.contextmanager
def service_log() -> Iterator[io.StringIO]:
    """The JSON log lines ``vejviser serve`` writes, for one test (the loggers are process-wide)."""
    stream = io.StringIO()
    loggers = [logging.getLogger(name) for name in SERVICE_LOGGERS]
    before = [(list(lg.handlers), lg.level) for lg in loggers]
    try:
        configure_logging(stream)
        yield stream
    finally:
        for lg, (handlers, level) in zip(loggers, before, strict=True):
            for handler in lg.handlers[len(handlers) :]:
                lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = True


@pytest.fixture
def client(tmp_path: Path, guideline_dir: Path) -> Iterator[TestClient]:
    public = ec.generate_private_key(ec.SECP384R1()).public_key()
    key = {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public)), "kid": "k1"}
    issuer = TrustedIssuer(iss="https://ehr.example.dk", jwks={"keys": [key]})
    settings = Settings(
        guidelines=guideline_dir,
        auth=AuthSettings(issuers=[issuer], public_base_url="https://cds.example.dk"),
        feedback_database=tmp_path / "feedback.sqlite",
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_refused_client_can_be_found_in_the_log(client: TestClient) -> None:
    """Found by QA (ops): a 401 in the EHR could not be tied to its log line (which said only
    the reason): no id in the answer, none in the log."""
    with service_log() as stream:
        refused = client.get("/cds-services", headers={"X-Request-ID": "proxy-1f3a.7"})
        made = client.get("/cds-services")
    assert refused.status_code == made.status_code == 401
    assert refused.headers["X-Request-ID"] == "proxy-1f3a.7"
    assert len(made.headers["X-Request-ID"]) == 32
    reason, access, _, _ = lines(stream)
    assert reason["request_id"] == "proxy-1f3a.7" and "reason=missing_header" in str(reason)
    assert access["request_id"] == "proxy-1f3a.7" and access["status"] == 401
    assert {line["request_id"] for line in lines(stream)[2:]} == {made.headers["X-Request-ID"]}


def test_every_request_is_one_access_line_without_its_raw_path(client: TestClient) -> None:
    """Found by QA (ops): nothing was logged for a 412 (a practice's FHIR server down) or a 400,
    so an operator could not see that an EHR was calling, let alone failing. The raw path is not
    logged: a caller may put a CPR number in it. A load balancer's probes are not logged."""
    with service_log() as stream:
        client.get("/health")
        client.get("/ready")
        client.post("/cds-services/0101801234", headers={"Authorization": "Bearer x.y.z"})
        client.get("/Patient/0101801234")
    _, unknown, nowhere = lines(stream)
    assert unknown["logger"] == "vejviser.access" and unknown["event"] == "request"
    assert (unknown["method"], unknown["route"], unknown["status"]) == (
        "POST",
        "/cds-services/{service_id}",
        401,
    )
    assert "0101801234" not in stream.getvalue() and "service" not in unknown
    assert isinstance(unknown["duration_ms"], float)
    assert (nowhere["route"], nowhere["status"]) == (None, 404)


def test_a_request_id_that_could_forge_a_log_line_is_replaced(client: TestClient) -> None:
    answer = client.get("/health", headers={"X-Request-ID": 'x", "level": "info'})
    assert answer.headers["X-Request-ID"] != 'x", "level": "info'
    assert client.get("/health", headers={"X-Request-ID": "a" * 129}).headers["X-Request-ID"] != (
        "a" * 129
    )


def test_an_unexpected_error_is_one_json_line_and_an_operation_outcome(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by QA (ops): Starlette re-raised after the handler, so uvicorn wrote every 500 a
    second time as a plain-text traceback of some 60 lines among the JSON ones."""

    def broken() -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(client.app.state.publisher, "current", broken)
    with service_log() as stream:
        answer = client.get("/ready", headers={"X-Request-ID": "r-500"})  # raised if it escaped
    assert answer.status_code == 500 and answer.headers["X-Request-ID"] == "r-500"
    assert answer.json()["issue"][0]["code"] == "exception"
    line, access = lines(stream)
    assert line["logger"] == "vejviser.service" and line["request_id"] == "r-500"
    assert "RuntimeError: a bug" in str(line["exception"])
    assert (access["status"], access["request_id"]) == (500, "r-500")
    assert access["outcome"] == "internal error; the request was not processed"


def test_uvicorn_writes_json_lines_too() -> None:
    """Found by QA (ops): 'INFO:     Started server process' and friends were plain text among
    the JSON lines, so a log pipeline parsing stderr as JSON lines choked on them."""
    with service_log() as stream:
        logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
    (line,) = lines(stream)
    assert line["logger"] == "uvicorn.error" and line["message"] == "Started server process [42]"


def test_the_access_line_of_a_412_says_why(tmp_path: Path, guideline_dir: Path) -> None:
    """A 412's reason is the service's own words (it never repeats the patient id): logged."""
    settings = Settings(
        guidelines=guideline_dir,
        auth=AuthSettings(enabled=False),
        feedback_database=tmp_path / "feedback.sqlite",
    )
    body = {"hook": "patient-view", "hookInstance": "h1", "context": {"patientId": "0101801234"}}
    with TestClient(create_app(settings)) as client, service_log() as stream:
        answer = client.post("/cds-services/vejviser-patient-view", json=body)
    assert answer.status_code == 412
    (access,) = [line for line in lines(stream) if line["logger"] == "vejviser.access"]
    assert access["service"] == "vejviser-patient-view" and access["status"] == 412
    assert access["outcome"] == answer.json()["issue"][0]["diagnostics"]
    assert "0101801234" not in stream.getvalue()
