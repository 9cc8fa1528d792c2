"""Provenance: a card and the feedback on it name the guideline id, version and the content hash
of the rule file that produced the card, also after the file has changed and been swapped."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from rules.effective import danish_today
from service.app import create_app
from service.auth import AuthSettings
from service.cds_hooks.prefetch import prefetch_from
from service.feedback import FeedbackStore
from service.guideline_source import GuidelinePublisher
from service.settings import Settings
from tests.support.live_service import diabetic_patient

PATIENT_VIEW = "/cds-services/vejviser-patient-view"


def call(client: TestClient, hook_instance: str) -> dict:
    templates = client.get("/cds-services").json()["services"][0]["prefetch"]
    body = {
        "hook": "patient-view",
        "hookInstance": hook_instance,
        "context": {"userId": "Practitioner/gp1", "patientId": "p1"},
        "prefetch": prefetch_from(templates, diabetic_patient(danish_today())),
    }
    (card,) = client.post(PATIENT_VIEW, json=body).json()["cards"]
    return card


def test_feedback_names_the_version_and_file_hash_of_its_card(
    tmp_path: Path, guideline_dir: Path
) -> None:
    settings = Settings(
        guidelines=guideline_dir,
        auth=AuthSettings(enabled=False),
        feedback_database=tmp_path / "feedback.sqlite",
        guidelines_poll_seconds=0,
    )
    with TestClient(create_app(settings)) as client:
        publisher: GuidelinePublisher = client.app.state.publisher  # type: ignore[attr-defined]
        first = call(client, "7b1c1f2e-5a43-4c1e-9a51-0f3f1c1d2e01")
        rule = guideline_dir / "example.yaml"
        rule.write_text(rule.read_text().replace("version: 1.0.0", "version: 1.0.1"))
        assert publisher.refresh() == "swapped"
        second = call(client, "7b1c1f2e-5a43-4c1e-9a51-0f3f1c1d2e02")
        for card in (first, second):
            feedback = {
                "feedback": [
                    {
                        "card": card["uuid"],
                        "outcome": "overridden",
                        "outcomeTimestamp": "2026-06-01T10:00:00Z",
                    }
                ]
            }
            posted = client.post(f"{PATIENT_VIEW}/feedback", json=feedback)
            assert posted.status_code == 200
        store: FeedbackStore = client.app.state.feedback  # type: ignore[attr-defined]
        records = store.feedback_records()
    provenance = [card["extension"]["dk.vejviser.provenance"] for card in (first, second)]
    assert [p["version"] for p in provenance] == ["1.0.0", "1.0.1"]
    assert provenance[0]["contentHash"] != provenance[1]["contentHash"]
    assert [
        (r.card_uuid, r.guideline_id, r.guideline_version, r.content_hash, r.recommendation_id)
        for r in records
    ] == [
        (card["uuid"], p["guideline"], p["version"], p["contentHash"], p["recommendation"])
        for card, p in zip((first, second), provenance, strict=True)
    ]
