"""Schemathesis against the service's own OpenAPI document: no operation ever answers 5xx.

Why this exists: the OpenAPI document is the service's promise about what it accepts. Schemathesis
reads it and sends what it allows (positive cases) and what it forbids (negative cases: wrong
types, missing fields, broken JSON, unexpected methods and content types) to every operation, in
process over ASGI. Each response must pass ``not_a_server_error`` and the service's own error
contract (every 4xx is a FHIR OperationOutcome, see ``service.cds_hooks.errors``).

What is adjusted, and why:

- Request-body ``$ref``s must resolve from the document root, or Schemathesis silently generates
  no body at all: :func:`test_served_openapi_refs_resolve` and
  :func:`test_request_bodies_are_generated` guard that (the service hoists nested models into
  ``components/schemas``).
- ``service_id`` is a free string in the document, so nearly every generated call would be a 404
  before its body is read. :func:`with_service_ids` narrows it to the real ids (negative cases
  still send others), and :func:`flatmap_case` gives half the bodies the service's own ``hook``
  and feedback card ids that are uuids, so they get past the first check.
- A ``fhirServer`` in a generated body is answered by an in-process stub (:func:`_fhir_stub`):
  the fetch path is exercised, the network never is.

The default run sends 100 generated examples per operation (plus Schemathesis' own example and
coverage cases); the ``slow`` variant, run by ``.ci/run``, sends 2,000. Each test prints how many
cases it ran and the statuses it got, so docs/robustness.md can be checked against a run.
"""

from __future__ import annotations

import copy
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import Case, CheckContext, Response
from schemathesis.checks import not_a_server_error

from fhir_adapter.rest import FhirRestClient
from service.app import create_app
from service.auth import AuthSettings
from service.cds_hooks.discovery import SERVICES
from service.settings import Settings

LIBRARY = Path(__file__).resolve().parents[2] / "guidelines"
HOOK_OF = {service.id: service.hook for service in SERVICES}
"""Service id -> the hook it answers (see :func:`with_service_ids`, :func:`flatmap_case`)."""

_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
FAST = settings(max_examples=100, deadline=None, suppress_health_check=_HEALTH)
"""Default run: 100 generated examples per operation, seconds each."""
SLOW = settings(max_examples=2_000, deadline=None, suppress_health_check=_HEALTH)
"""``-m slow`` (run by .ci/run): the numbers quoted in docs/robustness.md."""


# --- the OpenAPI document ------------------------------------------------------------------------


def unresolved_refs(document: dict[str, Any]) -> list[str]:
    """Every local ``$ref`` in ``document`` that does not resolve from the document root."""
    missing: list[str] = []

    def resolves(pointer: str) -> bool:
        node: Any = document
        for part in pointer.removeprefix("#/").split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/") and not resolves(ref):
                missing.append(ref)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    return sorted(set(missing))


def with_service_ids(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with the ``service_id`` path parameter narrowed to the ids the service has.

    The served document says "any string", so nearly every positive case would be a 404 before
    its body is read. With an ``enum`` (which the document could declare itself), positive cases
    call the real services and negative cases still try other ids.
    """
    document = copy.deepcopy(document)
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            for parameter in operation.get("parameters", []) if isinstance(operation, dict) else []:
                if parameter.get("name") == "service_id" and parameter.get("in") == "path":
                    parameter["schema"] = {**parameter["schema"], "enum": sorted(HOOK_OF)}
    return document


# --- the app -------------------------------------------------------------------------------------


def _fhir_stub(request: httpx2.Request) -> httpx2.Response:
    """A FHIR server that has a bare Patient for every read and nothing for every search: the
    fetch path runs, and no generated fhirServer URL ever reaches the network."""
    parts = request.url.path.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == "Patient":
        return httpx2.Response(200, json={"resourceType": "Patient", "id": parts[-1]})
    return httpx2.Response(200, json={"resourceType": "Bundle", "type": "searchset", "entry": []})


_STORE = tempfile.TemporaryDirectory(prefix="vejviser-schemathesis-")
"""The feedback database of the app under test; removed when the test process ends."""
STUB_FHIR = FhirRestClient(httpx2.AsyncClient(transport=httpx2.MockTransport(_fhir_stub)))


def build_app() -> FastAPI:
    """The service as deployed (the shipped guidelines), with authentication off and the OpenAPI
    document's ``service_id`` narrowed to the real ids."""
    app = create_app(
        Settings(
            guidelines=LIBRARY,
            auth=AuthSettings(enabled=False),
            feedback_database=Path(_STORE.name) / "feedback.sqlite",
        )
    )
    served = app.openapi
    app.openapi = lambda: with_service_ids(served())  # type: ignore[method-assign]
    return app


APP = build_app()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.hook
def flatmap_case(context: schemathesis.HookContext, case: Case) -> st.SearchStrategy[Case]:
    """Get generated bodies past the first check half the time: a call to a real service gets
    its own ``hook`` (a random one is a 400 before the prefetch is read), feedback gets card ids
    that are uuids (anything else is a 400 before the feedback store is reached)."""
    service_id = (case.path_parameters or {}).get("service_id", "")
    body = case.body
    if service_id not in HOOK_OF or not isinstance(body, dict):
        return st.just(case)
    if case.operation.path.endswith("/feedback"):
        items = body.get("feedback")
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            return st.just(case)

        def with_uuids(cards: list[str] | None) -> Case:
            if cards is not None:
                case.body = {
                    **body,
                    "feedback": [{**i, "card": c} for i, c in zip(items, cards, strict=True)],
                }
            return case

        uuids = st.lists(st.uuids().map(str), min_size=len(items), max_size=len(items))
        return st.one_of(st.none(), uuids).map(with_uuids)

    def with_hook(matching: bool) -> Case:
        if matching and "hook" in body:
            case.body = {**body, "hook": HOOK_OF[service_id]}
        return case

    return st.booleans().map(with_hook)


# --- checks and counting -------------------------------------------------------------------------


def errors_are_operation_outcomes(ctx: CheckContext, response: Response, case: Case) -> None:
    """The service's error contract: a 4xx body is a FHIR OperationOutcome (401 excepted: it is
    a bare challenge, and authentication is off here anyway)."""
    if 400 <= response.status_code < 500 and response.status_code != 401:
        body = response.json()
        if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
            raise AssertionError(f"HTTP {response.status_code} without an OperationOutcome")


CHECKS = [not_a_server_error, errors_are_operation_outcomes]
_statuses: Counter[int] = Counter()
"""Statuses of the cases the running test sent (reset per test by :func:`_report`)."""


@pytest.fixture(autouse=True)
def _report(request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    """Print each operation's case count and statuses, even without ``-s``: docs/robustness.md
    quotes these numbers."""
    _statuses.clear()
    yield
    if _statuses:
        total = sum(_statuses.values())
        spread = ", ".join(f"{code}: {n}" for code, n in sorted(_statuses.items()))
        server_errors = sum(n for code, n in _statuses.items() if code >= 500)
        with capsys.disabled():
            print(
                f"\n[schemathesis] {request.node.name}: {total} cases ({spread}); {server_errors} 5xx"
            )


def run(case: Case) -> None:
    """Send one case (the FHIR stub in place) and apply :data:`CHECKS`."""
    # Set on every call: the lifespan sets the real client, and would again if it restarted.
    APP.state.fhir = STUB_FHIR
    response = case.call()
    _statuses[response.status_code] += 1
    case.validate_response(response, checks=CHECKS)


# --- the tests -----------------------------------------------------------------------------------


@schema.parametrize()
@FAST
def test_no_server_errors(case: Case) -> None:
    """Every operation, positive and negative cases: no 5xx, every 4xx an OperationOutcome."""
    run(case)


@pytest.mark.slow
@schema.parametrize()
@SLOW
def test_no_server_errors_slow(case: Case) -> None:
    run(case)


def test_served_openapi_refs_resolve() -> None:
    """The document as served: every ``$ref`` resolves from the document root."""
    with TestClient(
        create_app(
            Settings(
                guidelines=LIBRARY,
                auth=AuthSettings(enabled=False),
                feedback_database=Path(_STORE.name) / "openapi.sqlite",
            )
        )
    ) as client:
        assert unresolved_refs(client.get("/openapi.json").json()) == []


def test_request_bodies_are_generated() -> None:
    """With an unresolvable ``$ref`` Schemathesis drops the request body of an operation without
    a word, and sends every POST without one."""
    assert unresolved_refs(APP.openapi()) == []
    for path in ("/cds-services/{service_id}", "/cds-services/{service_id}/feedback"):
        assert [body.media_type for body in schema[path]["POST"].body] == ["application/json"]


@pytest.mark.parametrize(
    ("timestamp", "status"),
    [
        ("0001-01-01T00:00:00+01:00", 400),  # before year 1 in UTC: was an OverflowError, a 500
        ("9999-12-31T23:59:59-01:00", 400),  # after year 9999 in UTC: likewise
        ("0001-01-01T00:00:00Z", 200),
        ("9999-12-31T23:59:59Z", 200),
    ],
)
def test_feedback_timestamps_at_the_ends_of_time(timestamp: str, status: int) -> None:
    """Found by this suite: outcomeTimestamp within a few hours of datetime's range."""
    item = {
        "card": "0b0c5e57-8f0a-4a36-9d2e-3f1f7c1e2a4b",
        "outcome": "overridden",
        "overrideReason": {"userComment": "fuzz"},
        "outcomeTimestamp": timestamp,
    }
    case = schema["/cds-services/{service_id}/feedback"]["POST"].Case(
        path_parameters={"service_id": "vejviser-patient-view"}, body={"feedback": [item]}
    )
    response = case.call()
    _statuses[response.status_code] += 1
    case.validate_response(response, checks=CHECKS)
    assert response.status_code == status, response.text
