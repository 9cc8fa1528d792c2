"""The CDS Hooks service end to end in-process: discovery, prefetch rules, cards, errors, feedback."""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import re
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from rules.effective import danish_today
from service.app import create_app
from service.auth import AuthSettings
from service.cds_hooks.prefetch import medication_on_server, prefetch_from
from service.feedback import OVERRIDE_REASON_SYSTEM, FeedbackRequest, FeedbackStore, IssuedCard
from service.settings import Settings

FIXTURES = Path(__file__).parent / "fixtures"
LIBRARY = Path(__file__).resolve().parents[2] / "guidelines"
PATIENT_VIEW = "/cds-services/vejviser-patient-view"


def make_client(tmp_path: Path, guidelines: Path, **more: Any) -> TestClient:
    settings = Settings(
        guidelines=guidelines,
        auth=AuthSettings(enabled=False),
        feedback_database=tmp_path / "feedback.sqlite",
        **more,
    )
    return TestClient(create_app(settings))


@pytest.fixture
def client(tmp_path: Path, guideline_dir: Path) -> Iterator[TestClient]:
    with make_client(tmp_path, guideline_dir) as test_client:
        yield test_client


@pytest.fixture
def library_client(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path, LIBRARY) as test_client:
        yield test_client


def bundle_resources() -> list[dict[str, Any]]:
    bundle = json.loads((FIXTURES / "ihd-patient.json").read_text())
    return [entry["resource"] for entry in bundle["entry"]]


def searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r} for r in resources],
    }


def full_prefetch(client: TestClient) -> dict[str, Any]:
    """Every discovery key filled from the fixture patient, as an EHR would."""
    return prefetch_from(
        client.get("/cds-services").json()["services"][0]["prefetch"], bundle_resources()
    )


def request(
    prefetch: dict[str, Any] | None, hook: str = "patient-view", **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/gp1", "patientId": "p1"},
        **extra,
    }
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def test_discovery_lists_services_with_prefetch(client: TestClient) -> None:
    services = client.get("/cds-services").json()["services"]
    assert {s["hook"] for s in services} == {"patient-view", "order-select", "order-sign"}
    prefetch = services[0]["prefetch"]
    assert prefetch["patient"] == "Patient/{{context.patientId}}"
    observations = [q for k, q in prefetch.items() if k.startswith("observations")]
    assert observations and "http://npu-terminology.org|NPU27300" in observations[0]
    assert "date=ge" in observations[0]


def test_cards_from_full_prefetch(client: TestClient) -> None:
    response = client.post(
        PATIENT_VIEW, json=request(full_prefetch(client)), headers={"Accept-Language": "en"}
    )
    assert response.status_code == 200, response.text
    (card,) = response.json()["cards"]
    assert card["summary"] == "HbA1c 67 mmol/mol (2026-03-02) is above the target 58 mmol/mol"
    assert len(card["summary"]) < 140
    assert card["indicator"] == "warning"
    assert uuid.UUID(card["uuid"])
    assert card["source"]["label"].startswith("Example HbA1c (Vejviser tests, v1.0.0)")
    assert card["source"]["url"].startswith("https://")
    assert (
        "Individual target (HbA1c): 58 mmol/mol, ischaemic heart disease (Condition/ihd)"
        in card["detail"]
    )
    assert "HbA1c: 67 mmol/mol (2026-03-02, Observation/abc)" in card["detail"]
    assert {r["code"] for r in card["overrideReasons"]} >= {"patient-declined", "not-suitable"}
    assert card["extension"]["dk.vejviser.provenance"]["guideline"] == "example-hba1c"


def test_a_dead_patient_gets_no_cards(client: TestClient) -> None:
    prefetch = full_prefetch(client)
    assert client.post(PATIENT_VIEW, json=request(prefetch)).json()["cards"]
    prefetch["patient"] = {**prefetch["patient"], "deceasedDateTime": "2025-11-02"}
    response = client.post(PATIENT_VIEW, json=request(prefetch))
    assert response.status_code == 200, response.text
    assert response.json()["cards"] == []


def test_cards_are_danish_by_default(client: TestClient) -> None:
    (card,) = client.post(PATIENT_VIEW, json=request(full_prefetch(client))).json()["cards"]
    assert card["summary"] == "HbA1c 67 mmol/mol (2026-03-02) er over målet 58 mmol/mol"


def test_the_source_label_is_in_the_card_language(tmp_path: Path, guideline_dir: Path) -> None:
    """Found in review: the publisher was one English text ("clinical content ...") on Danish
    cards too; it may be given in both languages, and a plain text serves both."""
    rule_file = guideline_dir / "example.yaml"
    rule_file.write_text(
        rule_file.read_text().replace(
            "publisher: Vejviser tests",
            "publisher:\n  da: Vejviser (regelfil); klinisk indhold fra test\n"
            "  en: Vejviser (rule file); clinical content tests",
        )
    )
    with make_client(tmp_path, guideline_dir) as client:
        labels = {
            language: client.post(
                PATIENT_VIEW,
                json=request(full_prefetch(client)),
                headers={"Accept-Language": language},
            ).json()["cards"][0]["source"]["label"]
            for language in ("da", "en")
        }
    assert "(Vejviser (regelfil); klinisk indhold fra test, v1.0.0)" in labels["da"]
    assert "(Vejviser (rule file); clinical content tests, v1.0.0)" in labels["en"]


def test_null_means_no_data(client: TestClient) -> None:
    prefetch = dict.fromkeys(full_prefetch(client))
    prefetch["patient"] = bundle_resources()[0]
    prefetch["conditions"] = searchset(
        [r for r in bundle_resources() if r["resourceType"] == "Condition"]
    )
    response = client.post(PATIENT_VIEW, json=request(prefetch), headers={"Accept-Language": "en"})
    assert response.status_code == 200, response.text
    (card,) = response.json()["cards"]
    assert card["summary"] == "No HbA1c in 12 months"
    (suggestion,) = card["suggestions"]
    assert card["selectionBehavior"] == "at-most-one"
    (action,) = suggestion["actions"]
    assert action["type"] == "create" and action["description"]
    resource = action["resource"]
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    assert resource["code"]["coding"][0] == {
        "system": "http://npu-terminology.org",
        "code": "NPU27300",
    }


def test_a_result_that_cannot_be_read_is_named_on_the_card(client: TestClient) -> None:
    """The card is made without it, so it says so: the HbA1c is in the chart, not missing."""
    resources = bundle_resources()
    (hba1c,) = [r for r in resources if r["resourceType"] == "Observation"]
    hba1c["valueQuantity"] = {"value": 67}  # no unit: it cannot be compared with a target
    prefetch = prefetch_from(
        client.get("/cds-services").json()["services"][0]["prefetch"], resources
    )
    response = client.post(PATIENT_VIEW, json=request(prefetch), headers={"Accept-Language": "en"})
    assert response.status_code == 200, response.text
    (card,) = response.json()["cards"]
    assert card["summary"] == "No HbA1c in 12 months"
    assert (
        "- HbA1c: unknown. Not counted (could not be read): Observation/abc: HbA1c value has no "
        "unit (expected mmol/mol)"
    ) in card["detail"]
    (card,) = client.post(PATIENT_VIEW, json=request(prefetch)).json()["cards"]
    assert "Ikke medregnet (kunne ikke læses): Observation/abc: HbA1c value" in card["detail"]


def test_a_medication_that_cannot_be_read_is_named_on_every_medication_fact(
    client: TestClient,
) -> None:
    """Found by QA: a prescription whose medicationReference does not resolve was dropped
    without a word; its drug is unknown, so every medication fact's line names it."""
    resources = bundle_resources()
    subject = {"reference": "Patient/p1"}
    metformin = {"coding": [{"system": "http://www.whocc.no/atc", "code": "A10BA02"}]}
    egfr = {"coding": [{"system": "http://loinc.org", "code": "62238-1"}]}
    resources += [
        {
            "resourceType": "MedicationStatement",
            "id": "met",
            "status": "active",
            "subject": subject,
            "medicationCodeableConcept": metformin,
            "effectiveDateTime": "2020-01-01",
        },
        {
            "resourceType": "MedicationRequest",
            "id": "unknown-drug",
            "status": "active",
            "intent": "order",
            "subject": subject,
            "medicationReference": {"reference": "Medication/not-sent"},
            "authoredOn": "2026-01-01",
        },
        {
            "resourceType": "Observation",
            "id": "egfr",
            "status": "final",
            "subject": subject,
            "code": egfr,
            "effectiveDateTime": danish_today().isoformat(),
            "valueQuantity": {"value": 25, "unit": "mL/min/1.73m2"},
        },
    ]
    prefetch = prefetch_from(
        client.get("/cds-services").json()["services"][0]["prefetch"], resources
    )
    response = client.post(PATIENT_VIEW, json=request(prefetch), headers={"Accept-Language": "en"})
    assert response.status_code == 200, response.text
    (card,) = [c for c in response.json()["cards"] if c["indicator"] == "critical"]
    assert (
        "Not counted (could not be read): MedicationRequest/unknown-drug: medicationReference "
        "'Medication/not-sent' does not resolve to a Medication"
    ) in card["detail"]
    egfr_line = next(line for line in card["detail"].splitlines() if "eGFR" in line)
    assert "unknown-drug" not in egfr_line, "named on medication facts only"


def test_two_facts_of_one_value_set_are_told_apart_by_their_windows(
    tmp_path: Path, guideline_dir: Path
) -> None:
    """'HbA1c: unknown' beside 'HbA1c: 67 mmol/mol' read as a contradiction."""
    path = guideline_dir / "example.yaml"
    text = path.read_text(encoding="utf-8")
    for old, new in [
        (
            "  first_hba1c:",
            "  hba1c_ever: {latest_observation: {valueset: hba1c, within: 10 years}}\n  first_hba1c:",
        ),
        ("when: not exists(hba1c)\n", "when: not exists(hba1c) and exists(hba1c_ever)\n"),
    ]:
        assert old in text
        text = text.replace(old, new, 1)
    path.write_text(text, encoding="utf-8")
    resources = bundle_resources()
    (hba1c,) = [r for r in resources if r["resourceType"] == "Observation"]
    hba1c["effectiveDateTime"] = "2020-03-02T09:00:00+01:00"
    with make_client(tmp_path, guideline_dir) as client:
        services = client.get("/cds-services").json()["services"]
        prefetch = prefetch_from(services[0]["prefetch"], resources)
        response = client.post(
            PATIENT_VIEW, json=request(prefetch), headers={"Accept-Language": "en"}
        )
        (card,) = response.json()["cards"]
        assert card["summary"] == "No HbA1c in 12 months"
        assert "- HbA1c, last 12 months: unknown\n" in card["detail"]
        assert "- HbA1c, last 10 years: 67 mmol/mol (2020-03-02, Observation/abc)" in card["detail"]
        (card,) = client.post(PATIENT_VIEW, json=request(prefetch)).json()["cards"]
        assert "- HbA1c, seneste 12 måneder: ukendt\n" in card["detail"]


def test_a_resource_sent_twice_is_not_called_unread(client: TestClient) -> None:
    prefetch = full_prefetch(client)
    observations = next(v for k, v in prefetch.items() if k.startswith("observations"))
    observations["entry"] *= 2
    response = client.post(PATIENT_VIEW, json=request(prefetch), headers={"Accept-Language": "en"})
    (card,) = response.json()["cards"]
    assert "HbA1c: 67 mmol/mol (2026-03-02, Observation/abc)" in card["detail"]
    assert "could not be read" not in card["detail"]


def test_missing_prefetch_without_fhir_server_is_412(client: TestClient) -> None:
    prefetch = full_prefetch(client)
    del prefetch["conditions"]
    response = client.post(PATIENT_VIEW, json=request(prefetch))
    assert response.status_code == 412
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert "conditions" in body["issue"][0]["diagnostics"]


def test_a_patient_not_found_is_412_without_its_id(client: TestClient) -> None:
    """Found by QA: the 412 repeated the patient id, which some systems fill with the CPR
    number; EHRs log such bodies."""
    body = request(full_prefetch(client))
    body["context"]["patientId"] = "0101011234"
    response = client.post(PATIENT_VIEW, json=body)
    assert response.status_code == 412
    assert response.json()["issue"][0]["code"] == "not-found"
    assert "0101011234" not in response.text


def test_operation_outcome_value_counts_as_absent(client: TestClient) -> None:
    prefetch = full_prefetch(client)
    prefetch["conditions"] = {"resourceType": "OperationOutcome", "issue": []}
    assert client.post(PATIENT_VIEW, json=request(prefetch)).status_code == 412


@pytest.mark.parametrize(
    ("mutate", "status"),
    [
        (lambda b: b.pop("hook"), 400),
        (lambda b: b.pop("hookInstance"), 400),
        (lambda b: b.pop("context"), 400),
        (lambda b: b["context"].pop("patientId"), 400),
        (lambda b: b.update(hook="order-sign"), 400),
        (lambda b: b.update(fhirAuthorization={"access_token": "x", "token_type": "Bearer"}), 400),
        (  # RFC 6749: the token type is case-insensitive
            lambda b: b.update(
                fhirServer="https://ehr.example.dk/fhir",
                fhirAuthorization={"access_token": "x", "token_type": "BEARER"},
            ),
            200,
        ),
        (lambda b: b["prefetch"].update(patient="not a resource"), 400),
        (lambda b: b.update(extension={"com.example.x": {"a": 1}}, unknownField=[1, 2]), 200),
        (lambda b: b["context"].update(extension={"x": 1}), 200),
    ],
)
def test_request_validation(client: TestClient, mutate: Any, status: int) -> None:
    body = request(full_prefetch(client))
    mutate(body)
    response = client.post(PATIENT_VIEW, json=body)
    assert response.status_code == status, response.text
    if status == 400:
        assert response.json()["resourceType"] == "OperationOutcome"


def test_non_json_body_is_400(client: TestClient) -> None:
    response = client.post(
        PATIENT_VIEW, content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["issue"][0]["code"] == "invalid"


def test_a_body_over_the_limit_is_413_unread(tmp_path: Path, guideline_dir: Path) -> None:
    with make_client(tmp_path, guideline_dir, max_request_bytes=5_000) as small:
        body = json.dumps(request(full_prefetch(small))).encode()
        assert len(body) < 5_000
        assert small.post(PATIENT_VIEW, content=body).status_code == 200
        padded = body[:-1] + b', "padding": "' + b"x" * 5_000 + b'"}'
        response = small.post(PATIENT_VIEW, content=padded)
        assert response.status_code == 413
        assert response.json()["issue"][0]["code"] == "too-long"
        assert "larger than 5,000 bytes" in response.json()["issue"][0]["diagnostics"]

        def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield from (padded[i : i + 1_000] for i in range(0, len(padded), 1_000))

        assert small.post(PATIENT_VIEW, content=chunked()).status_code == 413
        feedback = "/cds-services/vejviser-patient-view/feedback"
        assert small.post(feedback, content=padded).status_code == 413


def test_unknown_service_is_404(client: TestClient) -> None:
    response = client.post("/cds-services/nope", json=request({}))
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"


def kidney_patient(client: TestClient, *medications: dict[str, Any]) -> dict[str, Any]:
    """Prefetch for p1 (born 1950) with an eGFR of 24 last month and ``medications``."""
    egfr = {
        "resourceType": "Observation",
        "id": "egfr",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://npu-terminology.org", "code": "DNK35302"}]},
        "effectiveDateTime": (danish_today() - dt.timedelta(days=30)).isoformat(),
        "valueQuantity": {"value": 24, "unit": "mL/min/1.73m2"},
    }
    keys = client.get("/cds-services").json()["services"][1]["prefetch"]
    prefetch: dict[str, Any] = {key: searchset([]) for key in keys}
    prefetch["patient"] = {"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01"}
    prefetch["medicationStatements"] = searchset(list(medications))
    for key in keys:
        if key.startswith("observations"):
            prefetch[key] = searchset([egfr])
    return prefetch


def drug(resource_type: str, ident: str, atc: str, **more: Any) -> dict[str, Any]:
    """A medication resource of p1 coded by ATC."""
    return {
        "resourceType": resource_type,
        "id": ident,
        "status": "active" if resource_type == "MedicationStatement" else "draft",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.whocc.no/atc", "code": atc}]
        },
        **more,
    }


def order_call(
    prefetch: dict[str, Any], hook: str, drafts: list[dict[str, Any]], **context: Any
) -> dict[str, Any]:
    """A call of an order hook with ``drafts`` as its draftOrders bundle."""
    body = request(prefetch, hook=hook)
    entries = [{"resource": r} for r in drafts]
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    body["context"].update(draftOrders=bundle, **context)
    return body


def test_order_select_treats_draft_orders_as_active(library_client: TestClient) -> None:
    prefetch = kidney_patient(library_client)
    draft = drug("MedicationRequest", "draft-metformin", "A10BA02", intent="order")
    selected = ["MedicationRequest/draft-metformin"]
    body = order_call(prefetch, "order-select", [draft], selections=selected)
    response = library_client.post("/cds-services/vejviser-order-select", json=body)
    assert response.status_code == 200, response.text
    cards = response.json()["cards"]
    assert cards and cards[0]["indicator"] == "critical"
    without_draft = copy.deepcopy(body)
    without_draft["context"].pop("draftOrders")  # REQUIRED: the cards would be the chart's
    response = library_client.post("/cds-services/vejviser-order-select", json=without_draft)
    assert response.status_code == 400
    assert "draftOrders is required" in response.json()["issue"][0]["diagnostics"]
    # Found by QA: a draft naming its drug by a Medication in the bundle was dropped, no card.
    medication = {
        "resourceType": "Medication",
        "id": "met",
        "code": draft.pop("medicationCodeableConcept"),
    }
    draft["medicationReference"] = {"reference": "Medication/met"}
    body["context"]["draftOrders"]["entry"].append({"resource": medication})
    by_reference = library_client.post("/cds-services/vejviser-order-select", json=body)
    assert [c["indicator"] for c in by_reference.json()["cards"]][:1] == ["critical"]
    # A draft is in use on the day it is ordered, whatever its supply and authoredOn say.
    draft["authoredOn"] = "2026-01-01T23:30:00Z"
    draft["dispenseRequest"] = {"expectedSupplyDuration": {"value": 1, "code": "d"}}
    supplied = library_client.post("/cds-services/vejviser-order-select", json=body)
    assert [c["indicator"] for c in supplied.json()["cards"]][:1] == ["critical"]


def test_order_select_cards_are_about_the_selected_orders(library_client: TestClient) -> None:
    """Found by QA: order-select answered with cards about orders selected earlier (the spec:
    decision support focuses on ``selections``), and a draftOrders bundle without medication
    (a lab order) got every card of the chart, as if the chart had been opened."""
    ibuprofen = drug("MedicationStatement", "ibu", "M01AE01", effectiveDateTime="2026-01-01")
    prefetch = kidney_patient(library_client, ibuprofen)
    metformin = drug("MedicationRequest", "d-met", "A10BA02", intent="order")
    paracetamol = drug("MedicationRequest", "d-para", "N02BE01", intent="order")
    url = "/cds-services/vejviser-order-select"

    def summaries(selected: list[str], drafts: list[dict[str, Any]]) -> list[str]:
        body = order_call(prefetch, "order-select", drafts, selections=selected)
        response = library_client.post(url, json=body, headers={"Accept-Language": "en"})
        assert response.status_code == 200, response.text
        return [card["summary"] for card in response.json()["cards"]]

    chart = library_client.post(PATIENT_VIEW, json=request(prefetch)).json()["cards"]
    assert chart, "the NSAID at eGFR 24 gives a card when the chart is opened"
    drafts = [metformin, paracetamol]
    assert summaries(["MedicationRequest/d-para"], drafts) == []
    (metformin_card,) = summaries(["MedicationRequest/d-met"], drafts)
    assert metformin_card.startswith("Metformin is contraindicated")
    lab = {"resourceType": "ServiceRequest", "id": "lab", "status": "draft", "intent": "order"}
    assert summaries(["ServiceRequest/lab"], [lab]) == []
    # order-sign has no selections: every draft is what is being signed
    sign = order_call(prefetch, "order-sign", drafts)
    cards = library_client.post("/cds-services/vejviser-order-sign", json=sign).json()["cards"]
    assert [c["indicator"] for c in cards] == ["critical"]


def test_a_draft_whose_drug_cannot_be_had_is_412(library_client: TestClient) -> None:
    """Found by QA: a draft naming its drug by a Medication the request did not carry (as in
    the standard's own order-sign example) gave 200 and no card: metformin at eGFR 24 passed."""
    draft = {
        "resourceType": "MedicationRequest",
        "id": "d1",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationReference": {"reference": "Medication/met", "display": "Metformin 500 mg"},
    }
    body = order_call(kidney_patient(library_client), "order-sign", [draft])
    response = library_client.post("/cds-services/vejviser-order-sign", json=body)
    assert response.status_code == 412, response.text
    assert response.json()["issue"][0]["code"] == "incomplete"
    assert "Medication/met" in response.json()["issue"][0]["diagnostics"]


def metformin_draft(**medication: Any) -> dict[str, Any]:
    """A draft metformin order of p1 whose drug is named by ``medication`` (medication[x])."""
    return {
        "resourceType": "MedicationRequest",
        "id": "d1",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        **medication,
    }


METFORMIN = {"coding": [{"system": "http://www.whocc.no/atc", "code": "A10BA02"}]}


@pytest.mark.parametrize(
    ("reference", "bundled"),
    [
        ("#met", []),  # the draft's own contained Medication
        (
            "https://fhir.example.org/fhir/Medication/met",
            ["https://fhir.example.org/fhir/Medication/met"],
        ),
        (
            "urn:uuid:5b1f3c2e-8d0a-4f5e-9c1b-2a7d6e4f8a90",
            ["urn:uuid:5b1f3c2e-8d0a-4f5e-9c1b-2a7d6e4f8a90"],
        ),
    ],
)
def test_a_draft_names_its_drug_by_any_reference_the_request_resolves(
    library_client: TestClient, reference: str, bundled: list[str]
) -> None:
    """Found by QA: a draft naming its drug by a urn:uuid or absolute fullUrl of a Medication in
    draftOrders (as a transaction bundle would) was dropped silently: no card, metformin passed."""
    medication = {"resourceType": "Medication", "id": "met", "code": METFORMIN}
    draft = metformin_draft(medicationReference={"reference": reference})
    if not bundled:
        draft["contained"] = [medication]
    elif reference.startswith("urn:"):
        del medication["id"]  # as in a transaction bundle: named by its fullUrl only
    body = order_call(kidney_patient(library_client), "order-sign", [draft])
    for full_url in bundled:
        body["context"]["draftOrders"]["entry"].append(
            {"fullUrl": full_url, "resource": medication}
        )
    response = library_client.post("/cds-services/vejviser-order-sign", json=body)
    assert response.status_code == 200, response.text
    assert [c["indicator"] for c in response.json()["cards"]] == ["critical"]


@pytest.mark.parametrize(
    ("reference", "named"),
    [
        ("https://fhir.example.org/fhir/Medication/met", "fhir.example.org"),
        ("urn:uuid:5b1f3c2e-8d0a-4f5e-9c1b-2a7d6e4f8a90", "not in draftOrders"),
        ("#met", "contained"),
    ],
)
def test_a_draft_whose_drug_is_elsewhere_is_412(
    library_client: TestClient, reference: str, named: str
) -> None:
    """Found by QA: a draft naming its drug by a Medication on another server, by a urn:uuid
    not in the bundle or by a contained Medication it does not contain gave 200 and no card;
    a Medication of the same id in the bundle was taken for it, whatever server it is on."""
    medication = {"resourceType": "Medication", "id": "met", "code": METFORMIN}
    draft = metformin_draft(medicationReference={"reference": reference})
    body = order_call(kidney_patient(library_client), "order-sign", [draft, medication])
    body["fhirServer"] = "https://ehr.example.dk/fhir"  # not the server the reference names
    response = library_client.post("/cds-services/vejviser-order-sign", json=body)
    assert response.status_code == 412, response.text
    (issue,) = response.json()["issue"]
    assert issue["code"] == "incomplete"
    assert named in issue["diagnostics"] and "p1" not in issue["diagnostics"]


@pytest.mark.parametrize(
    ("reference", "ident"),
    [
        ("Medication/m1", "m1"),
        ("Medication/m1/_history/2", "m1"),
        ("https://ehr.example.dk/fhir/Medication/m1", "m1"),
        ("https://ehr.example.dk/fhir/Medication/m1/_history/2", "m1"),
        ("https://fhir.example.org/fhir/Medication/m1", None),
        ("https://ehr.example.dk/fhirx/Medication/m1", None),
        ("#m1", None),
        ("urn:uuid:5b1f3c2e-8d0a-4f5e-9c1b-2a7d6e4f8a90", None),
        ("Medication/a b", None),
        ("Substance/m1", None),
    ],
)
def test_which_medication_references_are_read_from_fhir_server(
    reference: str, ident: str | None
) -> None:
    """Relative references and absolute ones under fhirServer, as one: the token is for it."""
    assert medication_on_server(reference, "https://ehr.example.dk/fhir/") == ident


def test_a_draft_with_only_text_gets_a_card_saying_it_was_not_checked(
    library_client: TestClient,
) -> None:
    """Found by QA: a draft whose drug is free text (no code) was dropped silently, so no card
    could read as "nothing against this order" (metformin at eGFR 24)."""
    prefetch = kidney_patient(library_client)
    text_only = metformin_draft(medicationCodeableConcept={"text": "Metformin 500 mg"})
    coded = drug("MedicationRequest", "d2", "A10BA02", intent="order")
    url = "/cds-services/vejviser-order-select"
    body = order_call(
        prefetch, "order-select", [text_only, coded], selections=["MedicationRequest/d1"]
    )
    response = library_client.post(url, json=body, headers={"Accept-Language": "en"})
    assert response.status_code == 200, response.text
    (card,) = response.json()["cards"]
    assert card["indicator"] == "info"
    assert card["summary"] == '"Metformin 500 mg" was not checked: the order has no drug code'
    assert card["source"]["label"] == "Vejviser"
    assert "overrideReasons" not in card and "extension" not in card  # no guideline's card
    danish = library_client.post(url, json=body).json()["cards"]
    assert [c["summary"] for c in danish] == [
        '"Metformin 500 mg" er ikke tjekket: ordinationen har ingen lægemiddelkode'
    ]
    # only about the selected orders, as the guidelines' cards are
    body["context"]["selections"] = ["MedicationRequest/d2"]
    cards = library_client.post(url, json=body).json()["cards"]
    assert [c["indicator"] for c in cards] == ["critical"]
    # order-sign: every draft; the guideline's card first
    sign = order_call(prefetch, "order-sign", [text_only, coded])
    cards = library_client.post("/cds-services/vejviser-order-sign", json=sign).json()["cards"]
    assert [c["indicator"] for c in cards] == ["critical", "info"]
    # feedback on it is stored, tied to no guideline: no patient exception
    feedback = {
        "feedback": [
            {
                "card": cards[1]["uuid"],
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {
                        "system": "https://vejviser.dk/fhir/CodeSystem/override-reason",
                        "code": "not-suitable",
                    }
                },
                "outcomeTimestamp": "2026-11-25T10:00:00Z",
            }
        ]
    }
    stored = library_client.post("/cds-services/vejviser-order-sign/feedback", json=feedback)
    assert stored.status_code == 200
    store = library_client.app.state.feedback
    (record,) = store.feedback_records()
    assert record.card_uuid == cards[1]["uuid"] and record.guideline_id is None
    issued = "SELECT patient_id, guideline_id FROM issued_cards WHERE card_uuid = ?"
    assert store._conn.execute(issued, (cards[1]["uuid"],)).fetchall() == [("p1", None)]
    assert store.all_exceptions() == []


@pytest.mark.parametrize(
    "medication",
    [
        {"medicationReference": {"display": "Metformin 500 mg"}},
        {
            "medicationReference": {"reference": "#m"},
            "contained": [
                {"resourceType": "Medication", "id": "m", "code": {"text": "Metformin 500 mg"}}
            ],
        },
        {"medicationCodeableConcept": {"text": "Metformin 500 mg", "coding": [{"display": "x"}]}},
    ],
)
def test_a_draft_without_a_usable_code_gets_the_card_however_it_names_its_drug(
    library_client: TestClient, medication: dict[str, Any]
) -> None:
    body = order_call(kidney_patient(library_client), "order-sign", [metformin_draft(**medication)])
    response = library_client.post(
        "/cds-services/vejviser-order-sign", json=body, headers={"Accept-Language": "en"}
    )
    assert response.status_code == 200, response.text
    assert [c["summary"] for c in response.json()["cards"]] == [
        '"Metformin 500 mg" was not checked: the order has no drug code'
    ]


LOCAL_DRUGS = "http://example.org/drugs"  # made up: a system no guideline reads drugs in
VARENUMMER = "https://example.dk/fhir/varenummer"  # a Danish package number, as a local URI


def coded(*codings: tuple[str, str]) -> dict[str, Any]:
    """A drug concept named "Metformin 500 mg" with ``codings`` as (system, code) pairs."""
    return {
        "text": "Metformin 500 mg",
        "coding": [{"system": system, "code": code} for system, code in codings],
    }


@pytest.mark.parametrize(
    ("medication", "systems"),
    [
        ({"medicationCodeableConcept": coded((LOCAL_DRUGS, "met500"))}, LOCAL_DRUGS),
        (
            {"medicationCodeableConcept": coded((VARENUMMER, "123456"), (LOCAL_DRUGS, "m"))},
            f"{VARENUMMER}, {LOCAL_DRUGS}",
        ),
        (
            {
                "medicationReference": {"reference": "#m"},
                "contained": [
                    {"resourceType": "Medication", "id": "m", "code": coded((VARENUMMER, "1"))}
                ],
            },
            VARENUMMER,
        ),
    ],
)
def test_a_draft_coded_only_in_a_system_no_guideline_uses_gets_the_not_checked_card(
    library_client: TestClient, medication: dict[str, Any], systems: str
) -> None:
    """Found by QA: a draft whose drug was coded only in a system no guideline reads drugs in
    (a local drug number instead of ATC) passed without a card, as if nothing spoke against
    it: the normaliser read a code, but no value set could ever hold it."""
    draft = metformin_draft(**medication)
    body = order_call(kidney_patient(library_client), "order-sign", [draft])
    url = "/cds-services/vejviser-order-sign"
    response = library_client.post(url, json=body, headers={"Accept-Language": "en"})
    assert response.status_code == 200, response.text
    (card,) = response.json()["cards"]
    assert card["indicator"] == "info"
    assert card["summary"] == (
        '"Metformin 500 mg" was not checked: its drug code is of a system no guideline uses'
    )
    assert card["source"]["label"] == "Vejviser"
    assert card["source"]["topic"]["code"] == "order-not-checked"
    assert "overrideReasons" not in card and "extension" not in card
    reason = f"MedicationRequest/d1: its drug is coded only in {systems}, which no guideline uses"
    assert reason in card["detail"]
    (danish,) = library_client.post(url, json=body).json()["cards"]
    assert danish["summary"] == (
        '"Metformin 500 mg" er ikke tjekket: lægemiddelkoden er fra et kodesystem, ingen '
        "vejledning bruger"
    )
    assert f"lægemidlet er kun kodet i {systems}, som ingen vejledning bruger" in danish["detail"]


def test_which_code_systems_count_as_used_follows_the_guidelines_in_force(
    tmp_path: Path, guideline_dir: Path, library_client: TestClient
) -> None:
    """Used means used by a medication fact of a guideline in force, compared as canonical
    system keys: not a list written into the service (the library reads drugs in ATC and, for
    Synthea data, RxNorm; another guideline set may read them in others)."""
    rxnorm = "http://www.nlm.nih.gov/research/umls/rxnorm"
    url = "/cds-services/vejviser-order-sign"
    en = {"Accept-Language": "en"}

    def indicators(client: TestClient, *codings: tuple[str, str]) -> list[str]:
        draft = metformin_draft(medicationCodeableConcept=coded(*codings))
        body = order_call(kidney_patient(client), "order-sign", [draft])
        response = client.post(url, json=body, headers=en)
        assert response.status_code == 200, response.text
        return [c["indicator"] for c in response.json()["cards"]]

    # one coding in a used system is enough, whatever else the draft carries: checked as before
    assert indicators(
        library_client, (LOCAL_DRUGS, "m"), ("http://www.whocc.no/atc", "A10BA02")
    ) == ["critical"]
    assert indicators(library_client, (rxnorm, "860975")) == ["critical"]  # the library's RxNorm
    # an alias of ATC (the HL7 OID) is ATC: the canonical key counts, not the URI as written
    assert indicators(library_client, ("urn:oid:2.16.840.1.113883.6.73", "A10BA02")) == ["critical"]
    # a used system with a code in no value set: checked, nothing against it, no card
    assert indicators(library_client, ("http://www.whocc.no/atc", "N02BE01")) == []
    # the test set reads drugs in ATC only; a guideline that reads them in RxNorm from 2999 is
    # not in force, so an RxNorm code is still of a system no guideline uses
    (guideline_dir / "valuesets" / "metformin-rxnorm.yaml").write_text(
        "id: metformin-rxnorm\n"
        "title: {da: Metformin, en: Metformin}\n"
        "sources:\n"
        '  - {title: "RxNorm", url: "https://example.org/rxnorm", date: 2024-01-01}\n'
        "include:\n"
        "  - system: rxnorm\n"
        '    codes: ["860975"]\n'
    )
    (guideline_dir / "future-rxnorm.yaml").write_text(
        "id: future-rxnorm\n"
        "version: 1.0.0\n"
        "title: {da: Fremtid, en: Future}\n"
        "publisher: Vejviser tests\n"
        "description: {da: Testvejledning, en: Test guideline}\n"
        'sources: [{title: "Test", url: "https://example.org/", date: 2024-01-01}]\n'
        "effective: {from: 2999-01-01}\n"
        "register: {description: {da: Alle, en: Everyone}, when: 'true'}\n"
        "facts:\n"
        "  on_metformin: {active_medication: {valueset: metformin-rxnorm}}\n"
        "recommendations:\n"
        "  - id: on-metformin\n"
        "    when: on_metformin\n"
        "    indicator: info\n"
        "    summary: {da: Metformin, en: Metformin}\n"
    )
    with make_client(tmp_path, guideline_dir) as client:
        draft = metformin_draft(medicationCodeableConcept=coded((rxnorm, "860975")))
        body = order_call(kidney_patient(client), "order-sign", [draft])
        cards = client.post(url, json=body, headers=en).json()["cards"]
        assert [c["indicator"] for c in cards] == ["info"]
        assert f"coded only in {rxnorm}, which no guideline uses" in cards[0]["detail"]
        # ATC: checked (no card: p1 is in no register of the test set)
        assert indicators(client, ("http://www.whocc.no/atc", "A10BA02")) == []
        # order-select: only the drafts in selections, as for every card
        for selected, expected in (("MedicationRequest/d1", ["info"]), ("MedicationRequest/x", [])):
            select = order_call(
                kidney_patient(client), "order-select", [draft], selections=[selected]
            )
            response = client.post("/cds-services/vejviser-order-select", json=select)
            assert response.status_code == 200, response.text
            assert [c["indicator"] for c in response.json()["cards"]] == expected


@pytest.mark.parametrize(
    ("unit", "shown"),
    [
        ("<img src=x onerror=alert(1)>", "HbA1c unit '\\<img src=x onerror=alert(1)>' cannot be"),
        ("mmol/mol", "Source: Observation/a\\*b\\*c"),  # the author's {hba1c.resource}
    ],
)
def test_data_from_the_request_is_not_markup_in_the_detail(
    client: TestClient, unit: str, shown: str
) -> None:
    """Found by QA: a unit or resource id from the chart went into the markdown detail as it
    was, so '<img src=x onerror=...>' was raw HTML for a GFM renderer, 'a*b*c' emphasis."""
    resources = bundle_resources()
    (hba1c,) = [r for r in resources if r["resourceType"] == "Observation"]
    hba1c["valueQuantity"] = {"value": 67, "unit": unit}
    hba1c["id"] = "a*b*c"
    prefetch = prefetch_from(
        client.get("/cds-services").json()["services"][0]["prefetch"], resources
    )
    response = client.post(PATIENT_VIEW, json=request(prefetch), headers={"Accept-Language": "en"})
    (card,) = response.json()["cards"]
    assert shown in card["detail"]
    assert re.search(r"(?<!\\)<img|(?<!\\)\*b", card["detail"]) is None


def test_feedback_posted_twice_is_stored_once(client: TestClient) -> None:
    (card,) = client.post(PATIENT_VIEW, json=request(full_prefetch(client))).json()["cards"]
    feedback = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "overrideReason": {"reason": card["overrideReasons"][0]},
                "outcomeTimestamp": "2026-11-25T10:00:00Z",
            }
        ]
    }
    url = f"{PATIENT_VIEW}/feedback"
    assert client.post(url, json=feedback).status_code == 200
    assert client.post(url, json=feedback).status_code == 200
    store = client.app.state.feedback
    assert store.count_feedback() == 1


def test_malformed_feedback_is_400(client: TestClient) -> None:
    response = client.post(f"{PATIENT_VIEW}/feedback", json={"feedback": [{"outcome": "maybe"}]})
    assert response.status_code == 400


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json()["status"] == "ready"


def test_a_card_with_nothing_to_detail_has_no_empty_detail(
    tmp_path: Path, guideline_dir: Path
) -> None:
    """Found by QA: a recommendation without a detail text whose facts come from no value set
    (a register and a condition on age only) gave ``"detail": ""``; CDS Hooks 2.0 allows no
    empty string: an optional field without a value is omitted."""
    path = guideline_dir / "example.yaml"
    text = path.read_text(encoding="utf-8")
    text = text[: text.index("\ntests:") + 1]  # the file's own tests expect the T2D register
    for old, new in [
        ("  when: t2d and age >= 18\n", "  when: age >= 18\n"),
        ("    when: not exists(hba1c)\n", "    when: frail\n"),
        (
            "    suggestion:\n      label: {da: Bestil HbA1c, en: Order HbA1c}\n      order: hba1c\n",
            "",
        ),
    ]:
        assert old in text
        text = text.replace(old, new, 1)
    path.write_text(text, encoding="utf-8")
    with make_client(tmp_path, guideline_dir) as frail_client:
        keys = frail_client.get("/cds-services").json()["services"][0]["prefetch"]
        prefetch: dict[str, Any] = dict.fromkeys(keys)
        prefetch["patient"] = {"resourceType": "Patient", "id": "p1", "birthDate": "1930-01-01"}
        response = frail_client.post(PATIENT_VIEW, json=request(prefetch))
    (card,) = response.json()["cards"]
    assert card["summary"] == "Ingen HbA1c i 12 måneder"
    assert "detail" not in card


def test_related_cards_are_grouped(tmp_path: Path, guideline_dir: Path) -> None:
    path = guideline_dir / "example.yaml"
    text = path.read_text().replace(
        "    indicator: warning\n", "    indicator: warning\n    group: hba1c-high\n"
    )
    path.write_text(text)
    twin = text.replace("id: example-hba1c", "id: example-twin").replace(
        "Example HbA1c", "Example twin"
    )
    twin = twin.replace("    measure: hba1c\n", "    measure: hba1c\n    precedence: 5\n")
    (guideline_dir / "twin.yaml").write_text(twin)
    with make_client(tmp_path, guideline_dir) as grouped_client:
        prefetch = full_prefetch(grouped_client)
        response = grouped_client.post(
            PATIENT_VIEW, json=request(prefetch), headers={"Accept-Language": "en"}
        )
    (card,) = response.json()["cards"]
    assert "**Also in**: Example" in card["detail"]


def test_a_current_and_an_earlier_medication_fact_are_told_apart(
    library_client: TestClient,
) -> None:
    """Found by a GP's QA pass: 'Statiner: nej' beside 'Statiner: ja' on the card saying the
    patient with ischaemic heart disease takes no statin (one stopped in 2025 was the 'ja')."""
    ihd = {
        "resourceType": "Condition",
        "id": "ihd",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "urn:oid:1.2.208.176.2.31", "code": "K76"}]},
    }
    statin = drug("MedicationStatement", "old-statin", "C10AA05", status="stopped")
    statin["effectivePeriod"] = {"start": "2023-01-01", "end": "2025-01-01"}
    keys = library_client.get("/cds-services").json()["services"][0]["prefetch"]
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1958-01-01"}
    prefetch = prefetch_from(keys, [patient, ihd, statin])
    for language, current, started in [
        ("da", "aktuelt: nej", "startet inden for de seneste 100 år: ja"),
        ("en", "current: no", "started in the last 100 years: yes"),
    ]:
        cards = library_client.post(
            PATIENT_VIEW, json=request(prefetch), headers={"Accept-Language": language}
        ).json()["cards"]
        (card,) = [c for c in cards if "statin" in c["summary"].lower()]
        statins = [line for line in card["detail"].splitlines() if line.startswith("- Statin")]
        assert len(statins) == 2, card["detail"]
        assert statins[0].endswith(f"), {current}")
        assert statins[1].endswith(f"), {started} (MedicationStatement/old-statin)")


def test_an_egfr_sent_as_bare_text_reaches_the_metformin_card(library_client: TestClient) -> None:
    """Found by a GP's QA pass: a lab's eGFR '<15' without a unit was dropped, and a patient on
    metformin got 'no eGFR in 12 months (last: unknown)' instead of the contraindication."""
    metformin = drug("MedicationStatement", "met", "A10BA02", effectiveDateTime="2020-01-01")
    prefetch = kidney_patient(library_client, metformin)
    for key, value in prefetch.items():
        if key.startswith("observations"):
            (egfr,) = [e["resource"] for e in value["entry"]]
            egfr.pop("valueQuantity", None)  # one resource under every key
            egfr["valueString"] = "<15"
    cards = library_client.post(
        PATIENT_VIEW, json=request(prefetch), headers={"Accept-Language": "en"}
    ).json()["cards"]
    assert [c["summary"] for c in cards if c["indicator"] == "critical"] == [
        f"Metformin is contraindicated: eGFR <15 mL/min/1.73 m² ({egfr['effectiveDateTime']})"
        " is below 30. Stop metformin"
    ]


@pytest.mark.parametrize(
    ("header", "language"),
    [
        ("da-DK,da;q=0.9,en;q=0.8", "da"),
        ("en-GB,en;q=0.9", "en"),
        ("da;q=0.5, en;q=0.9", "en"),
        ("de-DE, en;q=0.8", "en"),
        ("en;q=0, da", "da"),
        ("de", "da"),
        ("*", "da"),
    ],
)
def test_the_card_language_follows_the_quality_values(
    client: TestClient, header: str, language: str
) -> None:
    """Found by a GP's QA pass: only the first range counted, so 'da;q=0.5, en' gave Danish
    and 'en;q=0' (not English) gave English."""
    response = client.post(
        PATIENT_VIEW, json=request(full_prefetch(client)), headers={"Accept-Language": header}
    )
    (card,) = response.json()["cards"]
    assert card["summary"].endswith(
        {"da": "er over målet 58 mmol/mol", "en": "above the target 58 mmol/mol"}[language]
    )


def test_a_prescription_stopped_before_its_supply_ran_out_gives_no_stop_card(
    library_client: TestClient,
) -> None:
    """Found by a GP's QA pass: lisinopril stopped for a creatinine rise (status stopped, 100
    days' supply written 35 days ago) still got 'creatinine rose 39 %: stop the RAS agent'."""
    today = danish_today()

    def day(days_ago: int) -> str:
        return (today - dt.timedelta(days=days_ago)).isoformat()

    def creatinine(ident: str, value: float, days_ago: int) -> dict[str, Any]:
        code = {"coding": [{"system": "http://npu-terminology.org", "code": "NPU04998"}]}
        quantity = {"value": value, "system": "http://unitsofmeasure.org", "code": "umol/L"}
        return {
            "resourceType": "Observation",
            "id": ident,
            "status": "final",
            "code": code,
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": day(days_ago),
            "valueQuantity": quantity,
        }

    supply = {"expectedSupplyDuration": {"value": 100, "code": "d"}}
    lisinopril = drug("MedicationRequest", "acei", "C09AA03", intent="order", authoredOn=day(35))
    lisinopril["dispenseRequest"] = supply
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1960-01-01"}
    resources = [patient, creatinine("before", 90, 40), creatinine("after", 125, 2), lisinopril]
    keys = library_client.get("/cds-services").json()["services"][0]["prefetch"]

    def critical(status: str) -> list[str]:
        lisinopril["status"] = status
        cards = library_client.post(PATIENT_VIEW, json=request(prefetch_from(keys, resources)))
        return [c["summary"] for c in cards.json()["cards"] if c["indicator"] == "critical"]

    assert [s[:22] for s in critical("active")] == ["P-kreatinin steget 38,"]
    assert critical("stopped") == []


def test_cards_are_answered_when_the_feedback_database_cannot_be_written(
    client: TestClient,
) -> None:
    """Found by QA (ops): with the feedback database's disk full (or its file read-only) every
    CDS call was a 500, so no GP got any decision support; /ready said ready, nothing amiss."""
    prefetch = full_prefetch(client)
    client.app.state.feedback._conn.execute("PRAGMA query_only = ON")  # as a read-only file
    for _ in range(2):
        response = client.post(PATIENT_VIEW, json=request(prefetch))
        assert response.status_code == 200 and len(response.json()["cards"]) == 1
    problem = client.get("/ready").json()["feedback_database_error"]
    assert problem["error"] == "attempt to write a readonly database"
    feedback = {
        "feedback": [
            {
                "card": response.json()["cards"][0]["uuid"],
                "outcome": "overridden",
                "overrideReason": {"userComment": "nej"},
                "outcomeTimestamp": "2026-11-25T10:00:00Z",
            }
        ]
    }
    refused = client.post(f"{PATIENT_VIEW}/feedback", json=feedback)
    assert refused.status_code == 503  # the EHR may send it again; not a 500
    assert refused.json()["issue"][0]["code"] == "transient"
    client.app.state.feedback._conn.execute("PRAGMA query_only = OFF")
    assert client.post(f"{PATIENT_VIEW}/feedback", json=feedback).status_code == 200
    assert client.get("/ready").json()["feedback_database_error"] is None


def test_readiness_says_a_change_was_rejected(client: TestClient, guideline_dir: Path) -> None:
    """The last good set stays in service (ready), but monitoring can see a change was refused
    without a token for /guidelines."""
    ready = client.get("/ready").json()
    assert ready["guidelines_rejected"] is False and ready["guidelines_source_error"] is False
    (guideline_dir / "broken.yaml").write_text("id: [\n")
    assert client.app.state.publisher.refresh() == "rejected"
    ready = client.get("/ready").json()
    assert ready["status"] == "ready" and ready["guidelines_rejected"] is True


def test_the_service_prunes_the_feedback_database_at_start_up(
    tmp_path: Path, guideline_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by QA (ops): nothing was ever deleted from the feedback database. The service now
    deletes, at start-up and hourly, the cards past feedback_window_days that no feedback names,
    and the feedback received that long ago on cards it never issued, off the event loop; the
    feedback on its cards and the exceptions a sweep reads stay."""
    now = dt.datetime.now(dt.UTC)
    long_ago = now - dt.timedelta(days=8)
    old, answered, recent, made_up = (str(uuid.uuid4()) for _ in range(4))
    with FeedbackStore(tmp_path / "feedback.sqlite", clock=lambda: long_ago) as store:
        store.record_cards(
            [
                IssuedCard(old, "vejviser-patient-view", "h", "0101501234", issued_at=long_ago),
                IssuedCard(answered, "vejviser-patient-view", "h", "p1", "g", issued_at=long_ago),
                IssuedCard(recent, "vejviser-patient-view", "h", "p1", "g", issued_at=now),
            ]
        )
        override = {"reason": {"system": OVERRIDE_REASON_SYSTEM, "code": "not-suitable"}}
        item = {"card": answered, "outcome": "overridden", "overrideReason": override}
        body = {
            "feedback": [
                {**item, "outcomeTimestamp": "2026-11-01T10:00:00Z"},
                {**item, "card": made_up, "outcomeTimestamp": "2026-11-01T10:00:00Z"},
            ]
        }
        store.record_feedback("vejviser-patient-view", FeedbackRequest.model_validate(body))
        assert len(store.all_exceptions()) == 1
    with (
        caplog.at_level(logging.INFO, logger="service.feedback"),
        make_client(tmp_path, guideline_dir, feedback_window_days=7) as client,
    ):
        store = client.app.state.feedback
        for _ in range(200):  # the start-up prune runs beside the first requests, not before
            if "deleted" in caplog.text:
                break
            time.sleep(0.01)
        provenance = [(r.card_uuid, r.guideline_id) for r in store.feedback_records()]
        assert client.get("/health").status_code == 200
    assert (
        "feedback database: 1 issued card(s) without feedback and 1 feedback item(s) on unknown"
        " cards older than 7 day(s) deleted in "
    ) in caplog.text
    assert "0101501234" not in caplog.text
    with sqlite3.connect(tmp_path / "feedback.sqlite") as conn:
        left = {row[0] for row in conn.execute("SELECT card_uuid FROM issued_cards")}
        assert conn.execute("SELECT count(*) FROM exceptions").fetchone()[0] == 1
    assert left == {answered, recent}
    assert provenance == [(answered, "g")]  # the feedback still names its guideline


def test_the_feedback_window_is_a_setting_of_at_least_a_moment(tmp_path: Path) -> None:
    assert Settings(auth=AuthSettings(enabled=False)).feedback_window_days == 30
    with pytest.raises(ValidationError, match="feedback_window_days"):
        Settings(auth=AuthSettings(enabled=False), feedback_window_days=0)
