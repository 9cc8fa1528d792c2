"""Prefetch fetched from a real FHIR server (sekmet-fhir): the same cards as full prefetch.

Covers what CDS_HOOKS.md lists: full, none, partial and null prefetch, paging, a server that is
down, too slow, or refuses the token (412), on Danish fixtures and on Synthea patients.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import random
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fastapi.testclient import TestClient

from rules.effective import danish_today
from service.app import create_app
from service.auth import AuthSettings
from service.cds_hooks.prefetch import prefetch_from
from service.settings import Settings
from synth.patients import generate_patient
from tests.support.sekmet import SekmetServer, free_port
from tests.support.shared_data import SYNTHEA, shared_data

LIBRARY = Path(__file__).resolve().parents[2] / "guidelines"
PATIENT_VIEW = "/cds-services/vejviser-patient-view"
SYNTHEA_DIABETICS = ("Patria_Schimmel_d2f8f862", "Louis_Maggio_2e275d4b", "Nikki_Ferry_a185cc91")


def make_client(tmp_path: Path, budget: float = 5.0) -> TestClient:
    settings = Settings(
        guidelines=LIBRARY,
        auth=AuthSettings(enabled=False),
        feedback_database=tmp_path / "feedback.sqlite",
        fhir_budget_seconds=budget,
    )
    return TestClient(create_app(settings))


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path) as test_client:
        yield test_client


def danish_patient(patient_id: str, resources: int = 60) -> list[dict[str, Any]]:
    """A seeded synthetic Danish patient; 60 resources make sekmet page its searches (20 a page)."""
    rng = random.Random(patient_id)
    patient = generate_patient(rng, patient_id, resources, danish_today())
    return [r for r in patient if r["resourceType"] != "Organization"]


def prefetch_for(client: TestClient, resources: list[dict[str, Any]]) -> dict[str, Any]:
    """What an EHR would send: every discovery key, filled from the patient's resources."""
    return prefetch_from(client.get("/cds-services").json()["services"][0]["prefetch"], resources)


def call(
    client: TestClient, patient_id: str, server: str | None, prefetch: dict[str, Any] | None
) -> Any:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/gp", "patientId": patient_id},
    }
    if server is not None:
        body["fhirServer"] = server
        body["fhirAuthorization"] = {
            "access_token": "opaque-token",
            "token_type": "Bearer",
            "scope": "patient/*.read",
        }
    if prefetch is not None:
        body["prefetch"] = prefetch
    return client.post(PATIENT_VIEW, json=body, headers={"Accept-Language": "en"})


def comparable(cards: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return sorted((c["indicator"], c["summary"], c["detail"]) for c in cards)


def test_no_prefetch_gives_the_same_cards_as_full_prefetch(
    client: TestClient, fhir_server: SekmetServer
) -> None:
    resources = danish_patient("dk-nopre")
    fhir_server.load(resources)
    full = call(client, "dk-nopre", None, prefetch_for(client, resources))
    fetched = call(client, "dk-nopre", fhir_server.base_url, None)
    assert full.status_code == 200 and fetched.status_code == 200, fetched.text
    assert full.json()["cards"], "the patient should get at least one card"
    assert comparable(fetched.json()["cards"]) == comparable(full.json()["cards"])


def test_partial_prefetch_fetches_only_the_absent_keys(
    client: TestClient, fhir_server: SekmetServer
) -> None:
    resources = danish_patient("dk-partial")
    fhir_server.load(resources)
    prefetch = prefetch_for(client, resources)
    full = call(client, "dk-partial", None, prefetch)
    partial = {k: v for k, v in prefetch.items() if not k.startswith("observations")}
    fetched = call(client, "dk-partial", fhir_server.base_url, partial)
    assert fetched.status_code == 200, fetched.text
    assert comparable(fetched.json()["cards"]) == comparable(full.json()["cards"])


def test_medications_given_by_reference_are_read_from_the_server(
    client: TestClient, fhir_server: SekmetServer
) -> None:
    """Found by QA: the prefetch subset has no _include, so a prescription coded by a
    reference to a Medication arrived without it, its drug unknown, and no card fired."""
    resources = danish_patient("dk-medref")
    full = call(client, "dk-medref", None, prefetch_for(client, resources))
    by_reference, medications = [], []
    for resource in resources:
        concept = resource.get("medicationCodeableConcept")
        if concept is None:
            by_reference.append(resource)
            continue
        medication = {"resourceType": "Medication", "id": f"med-{len(medications)}"}
        medications.append({**medication, "code": concept})
        changed = {k: v for k, v in resource.items() if k != "medicationCodeableConcept"}
        by_reference.append(
            {**changed, "medicationReference": {"reference": f"Medication/{medication['id']}"}}
        )
    assert medications, "the patient should have medication"
    fhir_server.load([*by_reference, *medications])
    fetched = call(client, "dk-medref", fhir_server.base_url, prefetch_for(client, by_reference))
    assert fetched.status_code == 200, fetched.text
    assert full.json()["cards"], "the patient should get at least one card"
    assert comparable(fetched.json()["cards"]) == comparable(full.json()["cards"])


@pytest.mark.parametrize("absolute", [False, True])
def test_a_draft_order_naming_its_drug_by_reference_reads_it_from_the_server(
    client: TestClient, fhir_server: SekmetServer, absolute: bool
) -> None:
    """Found by QA: the standard's own order-sign example names the drug of a draft by
    ``medicationReference`` with no Medication in draftOrders; it was never fetched from
    fhirServer, and metformin ordered at eGFR 24 gave no card. Named by its absolute URL on
    fhirServer, it was not fetched either, and the draft was dropped without a word."""
    patient = {"resourceType": "Patient", "id": "dk-draftref", "birthDate": "1950-01-01"}
    egfr = {
        "resourceType": "Observation",
        "id": "dk-draftref-egfr",
        "status": "final",
        "subject": {"reference": "Patient/dk-draftref"},
        "code": {"coding": [{"system": "http://npu-terminology.org", "code": "DNK35302"}]},
        "effectiveDateTime": danish_today().isoformat(),
        "valueQuantity": {"value": 24, "unit": "mL/min/1.73m2"},
    }
    metformin = {"coding": [{"system": "http://www.whocc.no/atc", "code": "A10BA02"}]}
    medication = {"resourceType": "Medication", "id": "dk-draftref-met", "code": metformin}
    fhir_server.load([patient, egfr, medication])
    draft = {
        "resourceType": "MedicationRequest",
        "id": "draft-1",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/dk-draftref"},
        "medicationReference": {"reference": "Medication/dk-draftref-met"},
    }
    if absolute:
        draft["medicationReference"]["reference"] = (
            f"{fhir_server.base_url}/Medication/dk-draftref-met"
        )
    body = {
        "hook": "order-sign",
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": fhir_server.base_url,
        "context": {
            "userId": "Practitioner/gp",
            "patientId": "dk-draftref",
            "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": []},
        },
    }
    body["context"]["draftOrders"]["entry"].append({"resource": draft})
    response = client.post("/cds-services/vejviser-order-sign", json=body)
    assert response.status_code == 200, response.text
    assert [card["indicator"] for card in response.json()["cards"]] == ["critical"]


def test_null_keys_are_never_fetched(client: TestClient) -> None:
    resources = danish_patient("dk-null")
    prefetch = dict.fromkeys(prefetch_for(client, resources))
    prefetch["patient"] = resources[0]
    dead = f"http://127.0.0.1:{free_port()}/fhir"
    response = call(client, "dk-null", dead, prefetch)
    assert response.status_code == 200, response.text


def test_server_down_is_412(client: TestClient) -> None:
    response = call(client, "dk-down", f"http://127.0.0.1:{free_port()}/fhir", None)
    assert response.status_code == 412
    assert response.json()["resourceType"] == "OperationOutcome"


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """A server that accepts connections and never answers: a FHIR server that is too slow."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/fhir"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


def test_too_slow_server_is_412_within_the_budget(tmp_path: Path) -> None:
    with make_client(tmp_path, budget=0.3) as slow_client, silent_server() as url:
        response = call(slow_client, "dk-slow", url, None)
    assert response.status_code == 412
    assert response.json()["issue"][0]["code"] == "timeout"


def test_expired_token_at_the_fhir_server_is_412(client: TestClient, tmp_path: Path) -> None:
    (tmp_path / "guarded").mkdir()
    guarded = SekmetServer(
        tmp_path / "guarded", server_auth={"types": ["bearer"], "tokens": ["valid-token"]}
    )
    guarded.start()
    try:
        response = call(client, "dk-token", guarded.base_url, None)
    finally:
        guarded.stop()
    assert response.status_code == 412
    assert response.json()["issue"][0]["code"] == "security"
    assert "opaque-token" not in response.text


def test_a_first_page_in_prefetch_is_completed_from_the_server(
    client: TestClient, fhir_server: SekmetServer
) -> None:
    resources = danish_patient("dk-paged", resources=80)
    fhir_server.load(resources)
    prefetch = prefetch_for(client, resources)
    full = call(client, "dk-paged", None, prefetch)
    paged = dict(prefetch)
    for key in [k for k in prefetch if k.startswith("observations")]:
        del paged[key]
    page = httpx2.get(
        f"{fhir_server.base_url}/Observation",
        params={"patient": "dk-paged", "_count": "10"},
        headers={"Accept": "application/fhir+json"},
    ).json()
    assert any(link["relation"] == "next" for link in page["link"])
    paged["observations1"] = page
    for key in [k for k in prefetch if k.startswith("observations") and k != "observations1"]:
        paged[key] = None
    response = call(client, "dk-paged", fhir_server.base_url, paged)
    assert response.status_code == 200, response.text
    assert comparable(response.json()["cards"]) == comparable(full.json()["cards"])


def synthea_resources(prefix: str) -> list[dict[str, Any]]:
    """A Synthea bundle as plain resources: urn:uuid references rewritten to Type/id, and
    references to resources the trimmed bundle lacks (encounters...) left out, as a server
    would refuse them."""
    (path,) = shared_data(SYNTHEA).glob(f"{prefix}*.json.gz")
    bundle = json.loads(gzip.decompress(path.read_bytes()))
    by_url = {
        e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle["entry"]
    }
    return [_resolved(e["resource"], by_url) for e in bundle["entry"]]


def _resolved(node: Any, by_url: dict[str, str]) -> Any:
    if isinstance(node, list):
        return [_resolved(item, by_url) for item in node if not _dangling(item, by_url)]
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str) and node["reference"] in by_url:
            return {**node, "reference": by_url[node["reference"]]}
        return {k: _resolved(v, by_url) for k, v in node.items() if not _dangling(v, by_url)}
    return node


def _dangling(node: Any, by_url: dict[str, str]) -> bool:
    reference = node.get("reference") if isinstance(node, dict) else None
    return (
        isinstance(reference, str) and reference.startswith("urn:uuid:") and reference not in by_url
    )


@pytest.mark.parametrize("prefix", SYNTHEA_DIABETICS)
def test_synthea_patients_from_the_fhir_server(
    client: TestClient, fhir_server: SekmetServer, prefix: str
) -> None:
    resources = synthea_resources(prefix)
    patient_id = resources[0]["id"]
    fhir_server.load(resources)
    full = call(client, patient_id, None, prefetch_for(client, resources))
    fetched = call(client, patient_id, fhir_server.base_url, None)
    assert full.status_code == 200 and fetched.status_code == 200, fetched.text
    assert comparable(fetched.json()["cards"]) == comparable(full.json()["cards"])
    assert any("diabetes" in c["source"]["label"].lower() for c in full.json()["cards"])
