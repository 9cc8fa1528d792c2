"""FhirRestClient against a real FHIR server (sekmet), plus mocks for what sekmet cannot do on cue
(answer slowly, refuse a token, point its next link elsewhere). pytest-asyncio is not installed:
each test drives its coroutine with asyncio.run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest

from fhir_adapter.rest import (
    FhirNotFound,
    FhirRejected,
    FhirRestClient,
    FhirTimeout,
    FhirUnauthorized,
    FhirUnavailable,
)
from tests.support.sekmet import SekmetServer, free_port

PATIENT = "rest-p1"
OTHER = "rest-p2"
HBA1C = "http://loinc.org|4548-4"
TOKEN = "eyJhbGciOiJFUzM4NCJ9.c2VjcmV0.c2ln"
MOCK_BASE = "https://fhir.example.dk/fhir"


def _observation(oid: str, patient: str, month: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": f"2024-{month:02d}-01",
        "valueQuantity": {
            "value": 48 + month,
            "unit": "mmol/mol",
            "system": "http://unitsofmeasure.org",
            "code": "mmol/mol",
        },
    }


@pytest.fixture(scope="module")
def server(fhir_server: SekmetServer) -> SekmetServer:
    """The session server with two patients: five HbA1c results for one, one for the other."""
    fhir_server.load(
        [
            {
                "resourceType": "Patient",
                "id": PATIENT,
                "gender": "female",
                "birthDate": "1950-01-01",
            },
            {"resourceType": "Patient", "id": OTHER, "gender": "male", "birthDate": "1962-06-15"},
            *(_observation(f"rest-o{m}", PATIENT, m) for m in range(1, 6)),
            _observation("rest-o9", OTHER, 9),
        ]
    )
    return fhir_server


def fetch(
    base_url: str,
    relative_url: str,
    *,
    token: str | None = None,
    budget: float = 5.0,
    transport: httpx2.AsyncBaseTransport | None = None,
    requests: list[httpx2.Request] | None = None,
    **options: Any,
) -> list[dict[str, Any]] | dict[str, Any]:
    """Run one fetch on a fresh AsyncClient; ``requests`` collects what was sent."""

    async def record(request: httpx2.Request) -> None:
        if requests is not None:
            requests.append(request)

    async def go() -> list[dict[str, Any]] | dict[str, Any]:
        async with httpx2.AsyncClient(
            transport=transport, timeout=10.0, event_hooks={"request": [record]}
        ) as client:
            rest = FhirRestClient(client, **options)
            return await rest.fetch(base_url, relative_url, token, time.monotonic() + budget)

    return asyncio.run(go())


def mock(handler: Callable[[httpx2.Request], httpx2.Response]) -> httpx2.MockTransport:
    return httpx2.MockTransport(handler)


def ids(resources: list[dict[str, Any]] | dict[str, Any]) -> list[str]:
    assert isinstance(resources, list)
    return [r["id"] for r in resources]


# --- against sekmet ---------------------------------------------------------------------------


def test_read_returns_the_resource(server: SekmetServer) -> None:
    patient = fetch(server.base_url, f"Patient/{PATIENT}")
    assert isinstance(patient, dict)
    assert (patient["resourceType"], patient["id"]) == ("Patient", PATIENT)


def test_read_of_a_missing_resource_is_not_found(server: SekmetServer) -> None:
    with pytest.raises(FhirNotFound) as caught:
        fetch(server.base_url, "Patient/rest-nobody")
    assert caught.value.status == 404
    assert "rest-nobody" not in str(caught.value)  # ids may be CPR numbers: not in messages


def test_search_follows_next_links_to_the_last_page(server: SekmetServer) -> None:
    sent: list[httpx2.Request] = []
    found = fetch(
        server.base_url,
        f"Observation?patient={PATIENT}&code={HBA1C}&_sort=-date&_count=2",
        requests=sent,
    )
    assert ids(found) == ["rest-o5", "rest-o4", "rest-o3", "rest-o2", "rest-o1"]
    assert len(sent) == 3  # pages of 2, 2 and 1
    assert all(r.headers["Prefer"] == "handling=strict" for r in sent)


def test_search_keeps_matches_and_drops_included_resources(server: SekmetServer) -> None:
    found = fetch(
        server.base_url,
        f"Observation?patient={OTHER}&_include=Observation:subject",
    )
    assert ids(found) == ["rest-o9"]


def test_search_without_matches_is_an_empty_list(server: SekmetServer) -> None:
    assert fetch(server.base_url, "Observation?patient=rest-nobody") == []


def test_unknown_search_parameter_is_rejected_not_ignored(server: SekmetServer) -> None:
    # Without Prefer: handling=strict sekmet would ignore it and return every Observation.
    with pytest.raises(FhirRejected) as caught:
        fetch(server.base_url, f"Observation?patient={PATIENT}&code-value-quantity=x")
    assert caught.value.status == 400
    assert caught.value.diagnostics is not None
    assert "code-value-quantity" in caught.value.diagnostics


def test_server_down_is_unavailable() -> None:
    # A port nothing listens on: connection refused, like a stopped server, without
    # restarting the shared one (a sekmet start costs 1.4-3 s on this machine).
    started = time.monotonic()
    with pytest.raises(FhirUnavailable, match="could not be reached"):
        fetch(f"http://127.0.0.1:{free_port()}/fhir", f"Patient/{PATIENT}", token=TOKEN)
    assert time.monotonic() - started < 1.0


def test_harness_explains_a_missing_sekmet(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"scripts/setup\.sh"):
        SekmetServer(tmp_path, executable=tmp_path / "no-sekmet").start()


# --- slow, refusing and misbehaving servers ---------------------------------------------------


def test_a_server_that_does_not_answer_times_out_at_the_deadline() -> None:
    async def go() -> float:
        async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(30)

        server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, httpx2.AsyncClient(timeout=30.0) as client:
            started = time.monotonic()
            with pytest.raises(FhirTimeout):
                await FhirRestClient(client).fetch(
                    f"http://127.0.0.1:{port}/fhir", "Patient/1", TOKEN, started + 0.2
                )
            return time.monotonic() - started

    assert asyncio.run(go()) < 0.5


def test_a_spent_budget_sends_nothing() -> None:
    sent: list[httpx2.Request] = []
    with pytest.raises(FhirTimeout):
        fetch(MOCK_BASE, "Patient/1", budget=-1.0, requests=sent, transport=mock(lambda r: 1 / 0))
    assert sent == []


def test_401_is_unauthorized_and_the_token_never_shows() -> None:
    def refuse(request: httpx2.Request) -> httpx2.Response:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        assert request.headers["Accept"] == "application/fhir+json"
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "login", "diagnostics": f"bad token {TOKEN}"}],
        }
        return httpx2.Response(401, json=outcome)

    with pytest.raises(FhirUnauthorized) as caught:
        fetch(MOCK_BASE, "Patient/1", token=TOKEN, transport=mock(refuse))
    assert caught.value.status == 401
    assert TOKEN not in str(caught.value)
    assert caught.value.diagnostics == "bad token [token]"


def test_a_next_link_to_another_origin_is_refused() -> None:
    def page(request: httpx2.Request) -> httpx2.Response:
        assert request.url.host == "fhir.example.dk", "the token went to another host"
        return httpx2.Response(200, json=_searchset("o1", next_url="https://evil.example/fhir?p=2"))

    sent: list[httpx2.Request] = []
    with pytest.raises(FhirUnavailable, match="another origin"):
        fetch(MOCK_BASE, "Observation?patient=1", token=TOKEN, transport=mock(page), requests=sent)
    assert len(sent) == 1


def test_endless_next_links_stop_at_the_page_cap() -> None:
    def page(request: httpx2.Request) -> httpx2.Response:
        offset = int(request.url.params.get("_offset", "0"))
        return httpx2.Response(
            200,
            json=_searchset(f"o{offset}", next_url=f"{MOCK_BASE}/Observation?_offset={offset + 1}"),
        )

    with pytest.raises(FhirUnavailable, match="more than 3 pages"):
        fetch(MOCK_BASE, "Observation", transport=mock(page), max_pages=3)


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (httpx2.Response(503, text="down for maintenance"), FhirUnavailable),
        (httpx2.Response(429), FhirUnavailable),
        (httpx2.Response(302, headers={"Location": "https://evil.example/"}), FhirUnavailable),
        (httpx2.Response(200, text="<html>login</html>"), FhirUnavailable),
        (httpx2.Response(200, json={"resourceType": "OperationOutcome"}), FhirUnavailable),
        (httpx2.Response(200, json={"resourceType": "Bundle", "type": "batch"}), FhirUnavailable),
        (httpx2.Response(403), FhirUnauthorized),
        (httpx2.Response(404), FhirRejected),  # an unknown type on a search is not "no data"
    ],
    ids=["503", "429", "redirect", "not-json", "wrong-type", "not-searchset", "403", "404-search"],
)
def test_unusable_answers_are_typed_errors(
    response: httpx2.Response, error: type[Exception]
) -> None:
    with pytest.raises(error):
        fetch(MOCK_BASE, "Observation?patient=1", token=TOKEN, transport=mock(lambda r: response))


def test_a_next_link_back_to_a_page_already_read_stops_the_search() -> None:
    """A server looping between pages would otherwise be followed up to the page cap."""
    sent: list[httpx2.Request] = []

    def page(request: httpx2.Request) -> httpx2.Response:
        following = "Observation?_page=2" if "_page" not in str(request.url) else "Observation"
        return httpx2.Response(200, json=_searchset("o1", next_url=f"{MOCK_BASE}/{following}"))

    with pytest.raises(FhirUnavailable, match="repeats a page"):
        fetch(MOCK_BASE, "Observation", transport=mock(page), requests=sent)
    assert len(sent) == 2


@pytest.mark.parametrize(
    ("bundle", "error", "message"),
    [
        ({"entry": ["Observation/1"]}, FhirUnavailable, "malformed entry"),
        ({"entry": [{"search": {"mode": "match"}}]}, FhirUnavailable, "without a resource"),
        ({"entry": [{"resource": {"id": "1"}}]}, FhirUnavailable, "without a resource"),
        (
            {
                "entry": [
                    {
                        "resource": {
                            "resourceType": "OperationOutcome",
                            "issue": [{"severity": "error", "code": "too-costly"}],
                        },
                        "search": {"mode": "outcome"},
                    }
                ]
            },
            FhirRejected,
            "reported an error",
        ),
        ({"link": [{"relation": "next"}]}, FhirUnavailable, "next link .* has no URL"),
        ({"link": [{"relation": "next", "url": "http://[::1"}]}, FhirUnavailable, "not a valid"),
    ],
    ids=["entry not an object", "no resource", "no type", "error outcome", "no url", "bad url"],
)
def test_a_searchset_that_cannot_be_trusted_fails_the_search(
    bundle: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Any doubt about a page fails the whole search: partial data would make wrong cards."""
    body = {"resourceType": "Bundle", "type": "searchset", **bundle}
    with pytest.raises(error, match=message):
        fetch(MOCK_BASE, "Observation", transport=mock(lambda r: httpx2.Response(200, json=body)))


def test_a_warning_outcome_and_included_resources_are_not_matches() -> None:
    body = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {
                "resource": {
                    "resourceType": "OperationOutcome",
                    "issue": [{"severity": "warning", "code": "informational"}],
                },
                "search": {"mode": "outcome"},
            },
            {"resource": {"resourceType": "Patient", "id": "p"}, "search": {"mode": "include"}},
            {"resource": {"resourceType": "Observation", "id": "o1"}},  # no search.mode: a match
        ],
    }
    found = fetch(
        MOCK_BASE, "Observation", transport=mock(lambda r: httpx2.Response(200, json=body))
    )
    assert ids(found) == ["o1"]


@pytest.mark.parametrize(
    "relative", ["", "https://evil.example/Patient/1", "//evil.example/Patient/1"]
)
def test_a_prefetch_url_must_be_relative_to_the_base(relative: str) -> None:
    with pytest.raises(ValueError, match="relative_url"):
        fetch(MOCK_BASE, relative, transport=mock(lambda r: 1 / 0))


@pytest.mark.parametrize(
    "base", ["ftp://fhir.example.dk/fhir", "https://fhir.example.dk/fhir?x=1", "fhir.example.dk"]
)
def test_a_fhir_server_url_that_is_not_an_http_base_is_unavailable(base: str) -> None:
    with pytest.raises(FhirUnavailable, match="FHIR server URL"):
        fetch(base, "Patient/1", transport=mock(lambda r: 1 / 0))


def test_a_read_answered_with_another_type_is_unavailable() -> None:
    body = {"resourceType": "Observation", "id": "1"}
    with pytest.raises(FhirUnavailable, match="Patient read"):
        fetch(MOCK_BASE, "Patient/1", transport=mock(lambda r: httpx2.Response(200, json=body)))


def test_a_malformed_token_is_never_sent() -> None:
    sent: list[httpx2.Request] = []
    with pytest.raises(FhirUnauthorized) as caught:
        fetch(
            MOCK_BASE,
            "Patient/1",
            token="abc\r\nX-Evil: 1",
            requests=sent,
            transport=mock(lambda r: 1 / 0),
        )
    assert sent == []
    assert "abc" not in str(caught.value)


def _searchset(oid: str, next_url: str | None = None) -> dict[str, Any]:
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": {"resourceType": "Observation", "id": oid}, "search": {"mode": "match"}}
        ],
    }
    if next_url:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return bundle
