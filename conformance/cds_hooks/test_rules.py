"""The pure rules of the suite, on the cases other implementations got wrong."""

from __future__ import annotations

import datetime as dt

import pytest

from conformance.cds_hooks import rules
from conformance.cds_hooks.fixture import (
    answer,
    context_for,
    fill,
    load_patient,
    spec_example,
)

PATIENT = "{{context.patientId}}"


@pytest.mark.parametrize(
    "template",
    [
        f"Patient/{PATIENT}",
        "{{context.userId}}",
        f"Condition?patient={PATIENT}",
        f"Observation?patient={PATIENT}&date=ge2025-10-01&code=http://npu-terminology.org|NPU27300",
        f"Observation?patient={PATIENT}&code:in=http://example.org/vs&_count=1&_sort=-date",
        "Practitioner/{{userPractitionerId}}",
        f"Goal?patient={PATIENT}&lifecycle-status=active,accepted",
    ],
)
def test_templates_in_the_subset(template: str) -> None:
    assert rules.template_problems(template, "patient-view") == []


@pytest.mark.parametrize(
    ("template", "words"),
    [
        # The standard's own example: sort:desc is not FHIR.
        (f"Observation?patient={PATIENT}&code=4548-4&_count=1&sort:desc=date", "_sort=-date"),
        (f"Observation?patient={PATIENT}&_include=Observation:subject", "_include"),
        (f"Observation?subject.name=x&patient={PATIENT}", "chained"),
        (f"Observation?patient={PATIENT}&date=sa2020-01-01", "prefix sa"),
        (f"Observation?patient={PATIENT}&code:text=hba1c", ":text"),
        ("Observation?patient={{context.patient}}", "not a context field"),
        ("Observation?patient={{context.draftOrders.entry}}", "neither"),
        ("Observation?patient={{context.patientId}", "unbalanced"),
    ],
)
def test_templates_outside_the_subset(template: str, words: str) -> None:
    problems = rules.template_problems(template, "patient-view")
    assert any(words in problem for problem in problems), problems


def test_order_hooks_may_name_draft_orders() -> None:
    template = "MedicationRequest?_id={{context.draftOrders}}"
    assert rules.template_problems(template, "order-sign") == []
    assert rules.template_problems(template, "patient-view")


@pytest.mark.parametrize(
    ("markdown", "found"),
    [
        ("**HbA1c** 67 > 58", []),
        ("eGFR < 30 and <30", []),
        ("See <https://vejledninger.dsam.dk/type2/>", []),
        ("Use `<b>` in code spans", []),
        ("```\n<div>code</div>\n```\nafter", []),
        ("<b>bold</b>", ["<b>", "</b>"]),
        ('Text <a href="https://x.dk">link</a>', ['<a href="https://x.dk">', "</a>"]),
        ("<!-- hidden -->", ["<!--"]),
        ("line<br/>break", ["<br/>"]),
    ],
)
def test_raw_html_in_markdown(markdown: str, found: list[str]) -> None:
    assert rules.html_in_markdown(markdown) == found


def test_empty_values() -> None:
    assert rules.response_empty_values({"cards": []}) == []
    body = {
        "cards": [{"summary": "", "detail": None, "links": [], "source": {}, "x": " "}],
    }
    assert rules.response_empty_values(body) == [
        "$.cards[0].summary is an empty string",
        "$.cards[0].detail is null",
        "$.cards[0].links is an empty array",
        "$.cards[0].source is an empty object",
        "$.cards[0].x is blank",
    ]
    assert rules.empty_values({"services": []}) == ["$.services is an empty array"]


def card(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "uuid": "0b7a4d3e-3c5f-4d4f-9f55-7f3f1a8c2b10",
        "summary": "HbA1c over målet",
        "indicator": "warning",
        "source": {"label": "DSAM", "url": "https://www.dsam.dk"},
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def test_card_rules() -> None:
    assert rules.card_problems([card()]) == []
    problems = rules.card_problems(
        [
            card(uuid=None, summary="x" * 140, indicator="hard-stop", source=None),
            card(
                uuid="5d6e7f80-1a2b-4c3d-8e9f-0a1b2c3d4e5f",
                source={"label": "L", "url": "/relative", "topic": {"code": "t"}},
            ),
            card(),
            card(),
        ]
    )
    assert problems == [
        "cards[0].uuid is missing (needed for feedback)",
        "cards[0].summary has 140 characters (must be < 140)",
        "cards[0].indicator is 'hard-stop', not info|warning|critical",
        "cards[0].source is required (an object with a label)",
        "cards[1].source.url '/relative' is not an absolute URL",
        "cards[1].source.topic.system is missing or empty",
        "cards[3].uuid repeats the uuid of cards[2]",
    ]


def test_suggestion_rules() -> None:
    good = {
        "label": "Bestil HbA1c",
        "uuid": "4c1f1d2e-9b0a-4f7e-8d3c-2a1b0c9d8e7f",
        "actions": [
            {
                "type": "create",
                "description": "Bestil HbA1c",
                "resource": {
                    "resourceType": "ServiceRequest",
                    "status": "draft",
                    "intent": "proposal",
                    "subject": {"reference": "Patient/p1"},
                },
            }
        ],
    }
    ok = card(suggestions=[good], selectionBehavior="at-most-one")
    assert rules.suggestion_problems([ok]) == ([], 1)
    bad_resource = {**good["actions"][0], "resource": {"resourceType": "ServiceRequest"}}
    bad = card(
        suggestions=[
            {"label": "x", "actions": [{"type": "remove"}]},
            {**good, "actions": [bad_resource]},
        ]
    )
    problems, count = rules.suggestion_problems([bad])
    assert count == 2
    assert (
        problems[0]
        == "cards[0].selectionBehavior is None; with suggestions it must be at-most-one or any"
    )
    assert "cards[0].suggestions[0].uuid is missing" in problems[1]
    assert "cards[0].suggestions[0].actions[0].type is 'remove'" in problems[2]
    assert problems[3] == "cards[0].suggestions[0].actions[0].description is required"
    assert problems[4].startswith(
        "cards[0].suggestions[1].actions[0].resource is not valid FHIR R4 ServiceRequest"
    )


def test_links_and_override_reasons() -> None:
    links = [
        {"label": "App", "url": "https://app.dk/launch", "type": "smart", "appContext": "x"},
        {"label": "Info", "url": "info.html", "type": "absolute", "appContext": "x"},
    ]
    problems, count = rules.link_problems([card(links=links)])
    assert count == 2
    assert problems == [
        "cards[0].links[1].url 'info.html' is not an absolute URL",
        "cards[0].links[1].appContext is only allowed on smart links",
    ]
    reasons = [{"system": "https://x", "code": "a", "display": "A"}, {"code": "b"}]
    problems, count = rules.override_reason_problems([card(overrideReasons=reasons)])
    assert count == 2
    assert problems == [
        "cards[0].overrideReasons[1].system is missing or empty",
        "cards[0].overrideReasons[1].display is missing or empty",
    ]


def test_fixture_dates_follow_today() -> None:
    """The shipped patient's latest HbA1c stays 26 days old whatever day the suite runs."""
    patient = load_patient(today=dt.date(2030, 1, 31))
    hba1c = [o for o in patient.of_type("Observation") if o["id"].endswith("hba1c-2")]
    assert hba1c[0]["effectiveDateTime"].startswith("2030-01-05")


def test_prefetch_answers_by_type_and_code() -> None:
    patient = load_patient()
    context = context_for("patient-view", patient)
    query = fill("Observation?patient={{context.patientId}}&code=http://loinc.org|8480-6", context)
    assert query == "Observation?patient=vejviser-conformance-1&code=http://loinc.org|8480-6"
    bundle = answer(query, patient)
    assert bundle is not None
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["vejviser-conformance-1-bp"]
    assert answer("Patient/vejviser-conformance-1", patient) == patient.resources[0]
    assert answer("Patient/someone-else", patient) is None
    assert fill("Practitioner/{{userPractitionerId}}", context) == (
        "Practitioner/vejviser-conformance-gp"
    )
    assert fill("Encounter/{{context.encounterId}}", context) is None


def test_spec_example_keeps_the_standards_request() -> None:
    body = spec_example({"patient": "Patient/{{context.patientId}}"}, load_patient())
    assert body["hookInstance"] == "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"
    assert body["context"] == {
        "userId": "Practitioner/example",
        "patientId": "1288992",
        "encounterId": "89284",
    }
    assert body["fhirAuthorization"]["token_type"] == "Bearer"
    assert body["prefetch"]["patient"]["id"] == "1288992"
