"""Fuzzing the prefetch: bad input never gives a 5xx.

Why this exists: a CDS client sends whatever its EHR holds, and the service reads every prefetch
resource itself (``fhir_adapter.normalise`` works on plain dicts, not a validating model). A crash
there would turn one odd resource into a 500 for the whole chart. These tests send resources with
wrong types, missing fields, absurd values (huge numbers, impossible dates, 10,000-character
strings), unknown resourceTypes, duplicate ids, references to other patients, deep nesting and
Bundles with thousands of entries, and check the contract of ``service.app``:

- no response is a 5xx;
- every 4xx body is a FHIR OperationOutcome;
- every 200 carries a ``cards`` list whose summaries are under 140 characters (CDS Hooks 2.0).

The default run keeps the example counts small; the ``slow`` variants (run by ``.ci/run``) send
many more. Each test prints how many requests it sent and the statuses it got, so the numbers in
docs/robustness.md can be checked against a run. A fhirServer, when a request names one, is an
in-process stub (see :func:`_fhir_stub`): the fuzz never touches the network.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fhir_adapter.codes import SYSTEMS, system_uri
from fhir_adapter.normalise import YDERNUMMER
from fhir_adapter.rest import FhirRestClient
from rules.effective import danish_today
from rules.guideline_set import load_guidelines
from service.app import create_app
from service.auth import AuthSettings
from service.cds_hooks.discovery import prefetch_templates
from service.settings import Settings

LIBRARY = Path(__file__).resolve().parents[2] / "guidelines"
PATIENT_VIEW = "/cds-services/vejviser-patient-view"
ORDER_SELECT = "/cds-services/vejviser-order-select"
PATIENT_ID = "p1"
FHIR_BASE = "https://fhir.example.test/fhir"
"""The fhirServer fuzzed requests may name; answered by :func:`_fhir_stub`, never the network."""

ORJSON_MAX_DEPTH = 1024
"""orjson.loads refuses deeper JSON (measured with orjson 3.13: 1,024 levels parse, 1,025 do not;
orjson.dumps stops at 255, which only matters for what the service sends back)."""

_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
FAST = settings(max_examples=50, deadline=None, suppress_health_check=_HEALTH)
"""Default run: a few seconds per test (drawing one fuzzed request takes ~50-150 ms)."""
SLOW = settings(max_examples=500, deadline=None, suppress_health_check=_HEALTH)
"""``-m slow`` (run by .ci/run): the numbers quoted in docs/robustness.md. 500, not the 1,000 of
2026-11-25: at about 135 ms a request the two fuzz tests took 4.5 of CI's 20 minutes."""

GUIDELINES = load_guidelines(LIBRARY)
TODAY = danish_today()
PREFETCH_KEYS = tuple(prefetch_templates(GUIDELINES, TODAY))
"""The keys discovery asks for today; all of them present means no FHIR fetch is needed."""

# --- counting ------------------------------------------------------------------------------------

_statuses: Counter[int] = Counter()
"""Statuses of the requests sent by the running test (reset per test by :func:`_report`)."""
_with_cards = Counter[str]()
"""How many of those 200s carried at least one card: the fuzz must reach the card texts too."""


@pytest.fixture(autouse=True)
def _report(request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    """Print how many requests a test sent and what came back, even without ``-s``: the docs
    quote these counts, so they must be visible in an ordinary CI log."""
    _statuses.clear()
    _with_cards.clear()
    yield
    if _statuses:
        total = sum(_statuses.values())
        spread = ", ".join(f"{code}: {n}" for code, n in sorted(_statuses.items()))
        spread += f"; {_with_cards['cards']} with cards"
        server_errors = sum(n for code, n in _statuses.items() if code >= 500)
        with capsys.disabled():
            print(f"\n[fuzz] {request.node.name}: {total} requests ({spread}); {server_errors} 5xx")


# --- the app ---------------------------------------------------------------------------------------


def _fhir_stub(request: httpx2.Request) -> httpx2.Response:
    """A FHIR server that has a bare Patient for every read and nothing for every search.

    Why: a fuzzed request may name a fhirServer (and a Bundle may carry a ``next`` link), and the
    fetch path must be exercised too, but a fuzz must not depend on, or send anything to, the
    network.
    """
    parts = request.url.path.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == "Patient":
        return httpx2.Response(200, json={"resourceType": "Patient", "id": parts[-1]})
    return httpx2.Response(200, json={"resourceType": "Bundle", "type": "searchset", "entry": []})


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One app for the module (the shipped guidelines, auth off) with the FHIR stub plugged in.

    ``raise_server_exceptions=False``: a crash must show up as the 500 a client would see, which
    is what the assertions are about; the traceback is in the captured log of a failing test.
    """
    settings_ = Settings(
        guidelines=LIBRARY,
        auth=AuthSettings(enabled=False),
        feedback_database=tmp_path_factory.mktemp("fuzz") / "feedback.sqlite",
    )
    with TestClient(create_app(settings_), raise_server_exceptions=False) as test_client:
        http = httpx2.AsyncClient(transport=httpx2.MockTransport(_fhir_stub))
        test_client.app.state.fhir = FhirRestClient(http)  # type: ignore[attr-defined]
        yield test_client
        asyncio.run(http.aclose())


def post(client: TestClient, path: str, payload: bytes, language: str = "da") -> httpx2.Response:
    """POST raw JSON bytes and check the no-5xx contract on whatever comes back."""
    response = client.post(
        path,
        content=payload,
        headers={"Content-Type": "application/json", "Accept-Language": language},
    )
    _statuses[response.status_code] += 1
    check_contract(response, payload)
    return response


def check_contract(response: httpx2.Response, payload: bytes) -> None:
    """No 5xx; a 4xx is an OperationOutcome; a 200 has cards with summaries under 140 chars."""
    status = response.status_code
    shown = payload[:2_000].decode("utf-8", "replace")
    assert status < 500, (
        f"HTTP {status}: {response.text[:500]}\nrequest (first 2,000 bytes): {shown}"
    )
    body = response.json()
    if status >= 400:
        assert body["resourceType"] == "OperationOutcome", response.text[:500]
        assert body["issue"] and body["issue"][0]["diagnostics"]
    else:
        assert status == 200, response.text[:500]
        assert isinstance(body["cards"], list)
        if body["cards"]:
            _with_cards["cards"] += 1
        for card in body["cards"]:
            assert isinstance(card["summary"], str) and len(card["summary"]) < 140, card


def encode(body: Any) -> bytes:
    """JSON as a client could send it: ``json`` (not orjson) so integers beyond 64 bits survive."""
    return json.dumps(body, ensure_ascii=False, allow_nan=False).encode()


# --- strategies: values --------------------------------------------------------------------------

ABSURD_NUMBERS: list[int | float] = [
    0,
    -0.0,
    -1,
    1e308,
    -1e308,
    5e-324,
    1e-300,
    2**53 + 1,
    2**63 - 1,
    -(2**63),
    2**64,  # beyond 64 bits: orjson reads it as a float
    10**30,
    -(10**30),
]
numbers = st.one_of(
    st.sampled_from(ABSURD_NUMBERS),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(),
    st.floats(min_value=0, max_value=300),  # plausible lab values, so rules fire
)

WEIRD_STRINGS = [
    "",
    " ",
    "NaN",
    "Infinity",
    "-Infinity",
    "null",
    "undefined",
    "1e999",
    "\x00",
    "\u202e",  # right-to-left override
    "<script>alert(1)</script>",
    "'; DROP TABLE feedback; --",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "٣٤٥",  # Arabic-Indic digits
    "0101011234",  # CPR-shaped
    "{{context.patientId}}",
]
long_strings = st.builds(
    str.__mul__, st.sampled_from(["x", "ø", "𝔘", "9", "/", " "]), st.sampled_from([10_000, 100_000])
)
strings = st.one_of(st.sampled_from(WEIRD_STRINGS), st.text(max_size=30), long_strings)

ABSURD_DATES = [
    "0000-00-00",
    "9999-12-31",
    "0001-01-01",
    "2026-02-30",
    "2026-13-01",
    "2026-00-10",
    "-0001-01-01",
    "10000-01-01",
    "2026",
    "2026-02",
    "2026-1-1",
    "20260101",
    "2026-02-03T25:61:61Z",
    "2026-02-03T10:00:00+99:00",
    "2026-02-03T10:00:00.123456789Z",
    "today",
]
dates = st.one_of(
    st.sampled_from(ABSURD_DATES),
    # around today, so observations fall inside the guidelines' look-back windows
    st.dates(TODAY - dt.timedelta(days=3 * 365), TODAY + dt.timedelta(days=400)).map(
        dt.date.isoformat
    ),
    st.dates().map(dt.date.isoformat),
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
)

adult_birth_dates = st.dates(dt.date(1920, 1, 1), dt.date(2005, 12, 31)).map(dt.date.isoformat)
scalars = st.one_of(st.none(), st.booleans(), numbers, strings)
wrong = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=6), scalars, max_size=3),
)
"""Any JSON of the wrong shape: a string, number or list where an object is expected, etc."""


def weighted(*options: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of ``options``, picked in proportion to its weight (``st.one_of`` takes no weights).
    Shrinking goes towards the first option, so list the valid one first."""
    return _pick([s for weight, s in options for _ in range(weight)])


@st.composite
def _pick(draw: st.DrawFn, choices: list[st.SearchStrategy[Any]]) -> Any:
    return draw(choices[draw(st.integers(0, len(choices) - 1))])


def field(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a valid value, one time in eight the wrong type. Mostly valid, because a resource
    with any bad field is skipped as a whole: the rules and card texts only see data (huge
    values, odd units, far dates) from resources that got past the reader."""
    return weighted((7, valid), (1, wrong))


def rarely(bad: st.SearchStrategy[Any], valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid``, one time in twenty ``bad``: for the envelope, where one bad value is a 400 or
    412 for the whole request, so that most requests get as far as the prefetch reader."""
    return weighted((19, valid), (1, bad))


def obj(
    required: dict[str, st.SearchStrategy[Any]],
    optional: dict[str, st.SearchStrategy[Any]] | None = None,
    keep: tuple[str, ...] = (),
) -> st.SearchStrategy[dict[str, Any]]:
    """A JSON object whose ``optional`` keys come and go; one in twenty loses a required key
    too (any but those in ``keep``)."""
    return _losing_a_key(st.fixed_dictionaries(required, optional=optional or {}), keep)


_SOMETIMES = rarely(st.just(True), st.just(False))


@st.composite
def _losing_a_key(
    draw: st.DrawFn, shape: st.SearchStrategy[dict[str, Any]], keep: tuple[str, ...]
) -> dict[str, Any]:
    # Strategies are built once, outside the draw: building them per example made drawing a
    # request several times slower than answering it.
    value = draw(shape)
    losable = sorted(set(value) - set(keep))
    if losable and draw(_SOMETIMES):
        del value[draw(st.sampled_from(losable))]
    return value


# --- strategies: FHIR-ish elements ---------------------------------------------------------------


def _library_codes() -> dict[str, list[tuple[str, str]]]:
    """(system URI, code) of the shipped value sets, by the resources that carry them: sets with
    a unit are measured (Observation, Goal), sets with ATC or RxNorm codes are medications, the
    rest are diagnoses. Fuzzed data with these codes meet the rules; random codes would not."""
    codes: dict[str, set[tuple[str, str]]] = {
        "measure": set(),
        "medication": set(),
        "diagnosis": set(),
    }
    for valueset in GUIDELINES.valuesets.values():
        pairs = [
            (system_uri(system), code) for system, code in (*valueset.exact, *valueset.prefixes)
        ]
        if valueset.unit:
            kind = "measure"
        elif any(
            system in ("atc", "rxnorm") for system, _ in (*valueset.exact, *valueset.prefixes)
        ):
            kind = "medication"
        else:
            kind = "diagnosis"
        codes[kind].update(pairs)
    t2d = GUIDELINES.valuesets["type-2-diabetes"]  # the value set most guidelines start from
    codes["type-2-diabetes"] = {(system_uri(sy), code) for sy, code in (*t2d.exact, *t2d.prefixes)}
    return {kind: sorted(pairs) for kind, pairs in codes.items()}


LIBRARY_CODES = _library_codes()
SYSTEM_URIS = sorted({uri for uris in SYSTEMS.values() for uri in uris})


def code_variants(code: str) -> st.SearchStrategy[str]:
    """The code as written, and the spellings EHRs produce (case, dots, padding, SKS 'D', children)."""
    return weighted(
        (6, st.just(code)),
        (1, st.sampled_from([code.lower(), f" {code} ", f"{code[:3]}.{code[3:]}", f"D{code}"])),
        (1, st.sampled_from([f"{code}9", f"{code}.9", ""])),
    )


def library_coding(pairs: list[tuple[str, str]]) -> st.SearchStrategy[dict[str, Any]]:
    """A Coding of one of ``pairs``, its code sometimes spelt another way."""
    return _pick(
        [
            obj(
                {"system": field(st.just(system)), "code": field(code_variants(code))},
                {"display": field(strings)},
            )
            for system, code in pairs
        ]
    )


odd_coding = obj(
    {
        "system": field(st.sampled_from([*SYSTEM_URIS, "", "npu", "HTTP://LOINC.ORG", "urn:oid:"])),
        "code": field(strings),
    },
    {"display": field(strings), "userSelected": wrong},
)


def concept(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    """A CodeableConcept with mostly the library's codes of ``kind``, sometimes odd ones."""
    return concept_of(LIBRARY_CODES[kind])


def concept_of(pairs: list[tuple[str, str]]) -> st.SearchStrategy[dict[str, Any]]:
    """A CodeableConcept with 1-3 codings, mostly from ``pairs``; now and then none at all."""
    one = weighted((4, library_coding(pairs)), (1, odd_coding))
    codings = weighted((8, st.lists(one, min_size=1, max_size=3)), (1, st.just([])))
    return obj({"coding": field(codings)}, {"text": field(strings)})


def status_concept(codes: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """clinicalStatus / verificationStatus: a CodeableConcept with a status code."""
    status_coding = obj({"code": field(st.sampled_from(codes))}, {"system": field(strings)})
    return obj({"coding": field(st.lists(status_coding, max_size=2))})


REFERENCES = [
    f"Patient/{PATIENT_ID}",
    "Patient/p2",  # another patient
    "Patient/P1",
    f"{FHIR_BASE}/Patient/{PATIENT_ID}",
    f"{FHIR_BASE}/Patient/{PATIENT_ID}/_history/3",
    "urn:uuid:5b4a3c2d-0000-4000-8000-000000000001",
    "Patient?identifier=urn:oid:1.2.208.176.1.2|0101011234",
    "Patient/",
    "/p1",
    PATIENT_ID,
    "#p1",
    "Group/p1",
]
subject = obj(
    {
        "reference": field(
            weighted((8, st.just(f"Patient/{PATIENT_ID}")), (1, st.sampled_from(REFERENCES)))
        )
    },
    {"display": field(strings), "identifier": wrong},
    keep=("reference",),
)
period = obj({}, {"start": field(dates), "end": field(dates)})
UNITS = [
    "mmol/mol",
    "%",
    "mg/dL",
    "mg/dl",
    "umol/L",
    "µmol/L",
    "mmol/L",
    "mL/min/1.73m2",
    "mL/min",
    "mg/g",
    "mg/mmol",
    "mm[Hg]",
    "mmHg",
    "g/L",
    "kg",
    "1",
    "{ratio}",
    "%{HbA1c}",
    "mmol/mol/mol",
    "10*9/L",
    "",
]
units = st.one_of(st.sampled_from(UNITS), strings)
UCUM = "http://unitsofmeasure.org"
COMPARATORS = ["<", "<=", ">=", ">", "ad", "=", "", "≤"]
quantity = obj(
    {"value": field(numbers)},
    {
        "unit": field(units),
        "code": field(units),
        "system": field(st.sampled_from([UCUM, "", "urn:x"])),
        "comparator": field(st.sampled_from(COMPARATORS)),
    },
)
DURATION_UNITS = ["d", "wk", "mo", "a", "h", "days", "måneder", "tabletter", ""]
duration = obj(
    {"value": field(numbers)},
    {
        "unit": field(st.one_of(st.sampled_from(DURATION_UNITS), strings)),
        "code": field(st.sampled_from(DURATION_UNITS)),
        "system": field(st.sampled_from([UCUM, "urn:x"])),
    },
)
VALUE_STRINGS = [
    ">90",
    "<5",
    "7,5 %",
    "67 mmol/mol",
    ">=",
    "-",
    "+.5",
    "..5",
    "0x10",
    " > 90 mL/min",
]
ids = st.sampled_from(["o1", "o2", "c1", "m1", PATIENT_ID, "", "a" * 64, "../p1", "x y"])
"""A small pool, so duplicate ids within one Bundle are common."""

# --- strategies: resources -----------------------------------------------------------------------

component = obj(
    {"code": field(concept("measure")), "valueQuantity": field(quantity)}, {"valueString": wrong}
)
observation = obj(
    {
        "resourceType": st.just("Observation"),
        "status": field(
            st.sampled_from(["final", "amended", "corrected", "preliminary", "FINAL", ""])
        ),
        "code": field(concept("measure")),
        "subject": field(subject),
    },
    {
        "id": field(ids),
        "effectiveDateTime": field(dates),
        "effectivePeriod": field(period),
        "effectiveInstant": field(dates),
        "issued": field(dates),
        "valueQuantity": field(quantity),
        "valueString": field(st.one_of(st.sampled_from(VALUE_STRINGS), strings)),
        "valueInteger": field(numbers),
        "valueBoolean": wrong,
        "component": field(st.lists(component, max_size=3)),
        "extension": wrong,
    },
)


def _measured() -> list[tuple[list[tuple[str, str]], str]]:
    """(codes, canonical unit) of every measured value set in the library."""
    return [
        ([(system_uri(sy), code) for sy, code in sorted(vs.exact)], vs.unit)
        for vs in GUIDELINES.valuesets.values()
        if vs.unit and vs.exact
    ]


def lab_result(codes: list[tuple[str, str]], unit: str) -> st.SearchStrategy[dict[str, Any]]:
    """A final, dated Observation of one measured value set, (mostly) in its own unit: the kind
    of result rules compare and cards quote, carrying absurd values, comparators and dates."""
    value = obj(
        {"value": field(numbers), "unit": field(weighted((3, st.just(unit)), (1, units)))},
        {"comparator": field(st.sampled_from(COMPARATORS)), "system": field(st.just(UCUM))},
    )
    return obj(
        {
            "resourceType": st.just("Observation"),
            "status": field(st.just("final")),
            "code": field(concept_of(codes)),
            "subject": field(subject),
            "effectiveDateTime": field(dates),
            "valueQuantity": field(value),
        },
        {"id": field(ids)},
    )


lab_results = _pick([lab_result(codes, unit) for codes, unit in _measured()])


def conditions_of(code: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Conditions coded by ``code``, with fuzzed statuses and dates."""
    return obj(
        {"resourceType": st.just("Condition"), "code": field(code), "subject": field(subject)},
        CONDITION_FIELDS,
    )


CONDITION_FIELDS = {
    "id": field(ids),
    "clinicalStatus": field(
        status_concept(["active", "resolved", "inactive", "remission", "relapse", "unknown"])
    ),
    "verificationStatus": field(
        status_concept(["confirmed", "refuted", "entered-in-error", "provisional"])
    ),
    "onsetDateTime": field(dates),
    "onsetPeriod": field(period),
    "onsetAge": wrong,
    "recordedDate": field(dates),
    "abatementDateTime": field(dates),
    "abatementPeriod": field(period),
}
condition = conditions_of(concept("diagnosis"))
diabetes = conditions_of(concept_of(LIBRARY_CODES["type-2-diabetes"]))
"""Type 2 diabetes: without it most guidelines do not apply, and no card shows."""
medication = obj(
    {"resourceType": st.just("Medication")},
    {"id": field(st.sampled_from(["m1", "m2", ""])), "code": field(concept("medication"))},
)
medication_reference = obj(
    {"reference": field(st.sampled_from(["#m1", "Medication/m1", "Medication/none", "#", "urn:x"]))}
)
_medication_fields = {
    "id": field(ids),
    "medicationCodeableConcept": field(concept("medication")),
    "medicationReference": field(medication_reference),
    "contained": field(st.lists(medication, max_size=2)),
}
statement = obj(
    {
        "resourceType": st.just("MedicationStatement"),
        "status": field(st.sampled_from(["active", "completed", "stopped", "not-taken", "x"])),
        "subject": field(subject),
    },
    {
        **_medication_fields,
        "effectiveDateTime": field(dates),
        "effectivePeriod": field(period),
        "dateAsserted": field(dates),
    },
)
medication_request = obj(
    {
        "resourceType": st.just("MedicationRequest"),
        "status": field(st.sampled_from(["active", "on-hold", "draft", "cancelled", "x"])),
        "subject": field(subject),
    },
    {
        **_medication_fields,
        "intent": field(st.sampled_from(["order", "plan", "proposal"])),
        "authoredOn": field(dates),
        "dispenseRequest": field(
            obj(
                {},
                {
                    "validityPeriod": field(period),
                    "expectedSupplyDuration": field(duration),
                    "numberOfRepeatsAllowed": field(numbers),
                },
            )
        ),
    },
)
target = obj(
    {},
    {
        "measure": field(concept("measure")),
        "detailQuantity": field(quantity),
        "detailRange": field(obj({}, {"low": field(quantity), "high": field(quantity)})),
        "dueDate": field(dates),
    },
)
goal = obj(
    {
        "resourceType": st.just("Goal"),
        "lifecycleStatus": field(st.sampled_from(["active", "accepted", "proposed", "x"])),
        "subject": field(subject),
    },
    {
        "id": field(ids),
        "target": field(st.lists(target, max_size=3)),
        "startDate": field(dates),
        "statusDate": field(dates),
    },
)
organization = obj(
    {"resourceType": st.just("Organization")},
    {
        "id": field(st.sampled_from(["org1", "org2"])),
        "identifier": field(
            st.lists(
                obj({"system": field(st.sampled_from([YDERNUMMER, "x"])), "value": field(strings)}),
                max_size=2,
            )
        ),
    },
)
practitioner_reference = obj(
    {},
    {
        "reference": field(st.sampled_from(["Organization/org1", "Practitioner/x", "#org", ""])),
        "identifier": field(obj({"system": field(st.just(YDERNUMMER)), "value": field(strings)})),
    },
)


def patient(pid: st.SearchStrategy[Any], keep: tuple[str, ...] = ()) -> st.SearchStrategy[Any]:
    """A Patient whose demographics are fuzzed; birthDate 9999-12-31 is a negative age."""
    return obj(
        {
            "resourceType": st.just("Patient"),
            "id": pid,
            "birthDate": field(weighted((3, adult_birth_dates), (1, dates))),
        },
        {
            "gender": field(st.sampled_from(["male", "female", "other", "unknown", "M", ""])),
            "generalPractitioner": field(st.lists(practitioner_reference, max_size=2)),
            "deceasedBoolean": wrong,
            "name": wrong,
        },
        keep=keep,
    )


the_patient = patient(st.just(PATIENT_ID), keep=("resourceType", "id"))
"""The context patient, present and named: most requests should get as far as the rules."""
any_patient = patient(field(st.sampled_from([PATIENT_ID, "p2", "P1", ""])))
unknown_resource = obj(
    {
        "resourceType": st.sampled_from(
            ["Foo", "", "patient", "OBSERVATION", "Encounter", "Observation\x00", "Bundle "]
        )
    },
    {"id": field(ids), "subject": field(subject)},
)
resource_object = weighted(
    (2, observation),
    (1, condition),
    (1, statement),
    (1, medication_request),
    (1, goal),
    (1, medication),
    (1, organization),
    (1, any_patient),
    (1, unknown_resource),
)
resource = st.one_of(resource_object, wrong)  # an entry's "resource" may not be an object at all
LINK_URLS = [
    f"{FHIR_BASE}/Observation?patient=p1&_page=2",
    "Observation?patient=p1&_page=2",
    "https://elsewhere.example/fhir/Observation?_page=2",
    "//elsewhere.example/fhir/Observation",
    "/Observation?_page=2",
    "http://",
    FHIR_BASE,
    f"{FHIR_BASE}/",
    "",
]
link = obj(
    {
        "relation": field(st.sampled_from(["next", "self", "previous"])),
        "url": field(st.sampled_from(LINK_URLS)),
    }
)


def entry_of(resources: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A Bundle entry holding one of ``resources``; now and then an empty or non-object entry."""
    entry = obj(
        {"resource": resources},
        {
            "fullUrl": field(
                st.sampled_from(["urn:uuid:1", "urn:uuid:2", f"{FHIR_BASE}/Patient/p1"])
            ),
            "search": field(obj({"mode": field(st.sampled_from(["match", "include", "outcome"]))})),
        },
    )
    return weighted((8, entry), (1, st.just({})), (1, wrong))


entry = entry_of(resource)
observations = weighted((1, lab_results), (1, observation))
KEY_RESOURCES: dict[str, st.SearchStrategy[Any]] = {
    "conditions": st.one_of(diabetes, condition),
    "medicationStatements": statement,
    "medicationRequests": medication_request,
    "goals": goal,
}
"""What a searchset under each prefetch key mostly holds (``observations*``: Observations)."""


def entries_for(key: str) -> st.SearchStrategy[Any]:
    """Entries of the resource type the key asks for, and sometimes any other (a Medication the
    statements refer to, an Organization, an unknown type, another patient)."""
    return weighted((6, entry_of(KEY_RESOURCES.get(key, observations))), (1, entry))


def bundle(entries: st.SearchStrategy[Any], with_links: bool = False) -> st.SearchStrategy[Any]:
    """A Bundle of fuzzed entries; ``with_links`` adds next/self links (pages to fetch)."""
    optional = {
        "type": field(st.sampled_from(["searchset", "collection", "transaction", ""])),
        "total": field(numbers),
        "id": field(ids),
    }
    required = {"resourceType": st.just("Bundle"), "entry": st.lists(entries, max_size=8)}
    if with_links:
        required["link"] = field(st.lists(link, min_size=1, max_size=2))
    return obj(required, optional, keep=("resourceType", "entry"))


OUTCOME = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "x"}]}


def prefetch_value(key: str) -> st.SearchStrategy[Any]:
    """What a client may send for ``key``: mostly a searchset, sometimes a next page to fetch,
    null, a single resource, or an OperationOutcome (it could not fetch it itself)."""
    return weighted(
        (30, bundle(entries_for(key))),
        (2, bundle(entries_for(key), with_links=True)),  # fetched from fhirServer, or 412
        (1, st.none()),  # "no data"
        (1, resource_object),  # a single resource instead of a searchset
        (1, st.just(OUTCOME)),  # counts as absent: fetched from fhirServer, or 412
    )


patient_value = weighted(
    (30, the_patient),
    (1, bundle(st.builds(lambda r: {"resource": r}, the_patient))),
    (1, any_patient),
    (1, st.none()),
    (1, st.just(OUTCOME)),
)
PREFETCH_VALUES = {
    key: patient_value if key == "patient" else prefetch_value(key)
    for key in (*PREFETCH_KEYS, "observations")
}


@st.composite
def prefetches(draw: st.DrawFn) -> dict[str, Any]:
    """Every discovery key, with fuzzed values; now and then a key is missing, an unknown key is
    added, one value is not a resource at all (a string, number, list...) or is a Bundle whose
    entry is not a list. The last two are a 400 for the whole request, hence only now and then."""
    prefetch = {key: draw(PREFETCH_VALUES[key]) for key in PREFETCH_KEYS}
    trouble = draw(
        weighted(
            (16, st.just("none")),
            (1, st.just("missing key")),
            (1, st.just("unknown key")),
            (1, st.just("not a resource")),
            (1, st.just("entry not a list")),
        )
    )
    if trouble == "missing key":
        del prefetch[draw(st.sampled_from(PREFETCH_KEYS))]
    elif trouble == "unknown key":
        prefetch[draw(st.text(max_size=10))] = draw(PREFETCH_VALUES["observations"])
    elif trouble == "not a resource":
        prefetch[draw(st.sampled_from(PREFETCH_KEYS))] = draw(wrong)
    elif trouble == "entry not a list":
        broken = {"resourceType": "Bundle", "type": "searchset", "entry": draw(wrong)}
        prefetch[draw(st.sampled_from(PREFETCH_KEYS))] = broken
    return prefetch


@st.composite
def cds_requests(
    draw: st.DrawFn, hook: str, context_extra: st.SearchStrategy[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A request envelope that is mostly valid (so the prefetch is read) around a fuzzed prefetch;
    half the time with a fhirServer, so missing keys and next links are fetched from the stub."""
    context: dict[str, Any] = {
        "patientId": draw(
            rarely(st.sampled_from(["p2", "P1", "", "a" * 65, "p 1", "../p1"]), st.just(PATIENT_ID))
        ),
        "userId": draw(rarely(wrong, st.just("Practitioner/gp1"))),
    }
    if context_extra is not None:
        context.update(draw(context_extra))
    body: dict[str, Any] = {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "context": context,
        "prefetch": draw(prefetches()),
    }
    if draw(st.booleans()):
        body["fhirServer"] = FHIR_BASE
    if draw(_SOMETIMES):
        body["extension"] = draw(wrong)  # ignored by the standard's rules, whatever it holds
    return body


draft_order = weighted((3, medication_request), (1, resource))
draft_orders = weighted(
    (12, bundle(st.builds(lambda r: {"resource": r}, draft_order))),
    (2, bundle(entry)),
    (1, obj({"entry": wrong})),
    (1, st.just({})),
    (1, st.none()),
    (1, wrong),  # not an object: 400 from the request model
)
order_context = obj(
    {"draftOrders": draft_orders},
    {
        "selections": field(
            st.lists(st.one_of(st.just("MedicationRequest/o1"), strings), max_size=3)
        )
    },
)
languages = st.sampled_from(["da", "en", "en-GB,da;q=0.5", "", "xx"])


# --- the fuzz --------------------------------------------------------------------------------------

patient_view_requests = cds_requests("patient-view")
order_select_requests = cds_requests("order-select", order_context)


@FAST
@given(body=patient_view_requests, language=languages)
def test_patient_view_fuzzed_prefetch(
    client: TestClient, body: dict[str, Any], language: str
) -> None:
    """patient-view with a fuzzed prefetch (see :func:`prefetches`)."""
    post(client, PATIENT_VIEW, encode(body), language)


@pytest.mark.slow
@SLOW
@given(body=patient_view_requests, language=languages)
def test_patient_view_fuzzed_prefetch_slow(
    client: TestClient, body: dict[str, Any], language: str
) -> None:
    post(client, PATIENT_VIEW, encode(body), language)


@FAST
@given(body=order_select_requests, language=languages)
def test_order_select_fuzzed_draft_orders(
    client: TestClient, body: dict[str, Any], language: str
) -> None:
    """order-select with fuzzed draftOrders (joined to the record as active medication) and a
    fuzzed prefetch."""
    post(client, ORDER_SELECT, encode(body), language)


@pytest.mark.slow
@SLOW
@given(body=order_select_requests, language=languages)
def test_order_select_fuzzed_draft_orders_slow(
    client: TestClient, body: dict[str, Any], language: str
) -> None:
    post(client, ORDER_SELECT, encode(body), language)


# --- huge bundles ----------------------------------------------------------------------------------


def plain_prefetch(**values: Any) -> dict[str, Any]:
    """Every discovery key with an empty searchset and the context patient, then ``values``."""
    empty = {"resourceType": "Bundle", "type": "searchset", "entry": []}
    prefetch: dict[str, Any] = dict.fromkeys(PREFETCH_KEYS, empty)
    prefetch["patient"] = {
        "resourceType": "Patient",
        "id": PATIENT_ID,
        "birthDate": "1950-01-01",
        "gender": "female",
    }
    prefetch.update(values)
    return prefetch


def patient_view(prefetch: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"patientId": PATIENT_ID, "userId": "Practitioner/gp1"},
        "prefetch": prefetch,
        **extra,
    }


OBSERVATION_KEY = next(key for key in PREFETCH_KEYS if key.startswith("observations"))
T2D = {
    "resourceType": "Condition",
    "id": "t2d",
    "subject": {"reference": f"Patient/{PATIENT_ID}"},
    "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11.9"}]},
    "onsetDateTime": "2015-01-01",
}


@st.composite
def huge_bundles(draw: st.DrawFn) -> dict[str, Any]:
    """A searchset of 1,000-5,000 copies of one fuzzed Observation: distinct ids, all the same id,
    or a few ids repeated. Drawing thousands of distinct resources would make Hypothesis, not the
    service, the bottleneck; copies still make the reader and the rules walk every entry."""
    template = draw(observation)
    assume(len(encode(template)) <= 4_000)  # 5,000 copies of a 100,000-character string: no
    count = draw(st.integers(1_000, 5_000))
    naming = draw(st.sampled_from(["distinct", "same", "few"]))
    entries = []
    for index in range(count):
        copy = dict(template)
        copy["id"] = {"distinct": f"o{index}", "same": "o1", "few": f"o{index % 7}"}[naming]
        entries.append({"fullUrl": f"urn:uuid:{index}", "resource": copy})
    return {"resourceType": "Bundle", "type": "searchset", "entry": entries}


def send_huge(client: TestClient, bundle_: dict[str, Any]) -> None:
    """The huge searchset as a diabetic's observations, so the rules read every entry."""
    conditions = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": T2D}]}
    prefetch = plain_prefetch(**{OBSERVATION_KEY: bundle_, "conditions": conditions})
    post(client, PATIENT_VIEW, encode(patient_view(prefetch)))


@settings(FAST, max_examples=5)
@given(bundle_=huge_bundles())
def test_huge_bundles(client: TestClient, bundle_: dict[str, Any]) -> None:
    """1,000-5,000 fuzzed Observations for a diabetic: no 5xx, summaries under 140 characters."""
    send_huge(client, bundle_)


@pytest.mark.slow
@settings(SLOW, max_examples=100)
@given(bundle_=huge_bundles())
def test_huge_bundles_slow(client: TestClient, bundle_: dict[str, Any]) -> None:
    send_huge(client, bundle_)


def test_bundle_of_twenty_thousand_observations(client: TestClient) -> None:
    """The 'huge bundle' example: 20,000 valid HbA1c results, 100 of them high, plus duplicates
    of every id and a reference to another patient on each tenth: cards, not a crash."""
    entries = []
    for index in range(20_000):
        day = TODAY - dt.timedelta(days=index % 700)
        entries.append(
            {
                "resource": {
                    "resourceType": "Observation",
                    "id": f"hba1c-{index % 10_000}",  # every id twice
                    "status": "final",
                    "subject": {"reference": "Patient/p2" if index % 10 == 0 else "Patient/p1"},
                    "code": {
                        "coding": [{"system": "http://npu-terminology.org", "code": "NPU27300"}]
                    },
                    "effectiveDateTime": day.isoformat(),
                    "valueQuantity": {"value": 90 if index < 100 else 50, "unit": "mmol/mol"},
                }
            }
        )
    observations = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
    conditions = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": T2D}]}
    prefetch = plain_prefetch(**{OBSERVATION_KEY: observations, "conditions": conditions})
    response = post(client, PATIENT_VIEW, encode(patient_view(prefetch)), "en")
    assert response.status_code == 200
    assert response.json()["cards"], "a diabetic with a high HbA1c gets a card"


# --- deep nesting ----------------------------------------------------------------------------------

DEEP = "__deep__"
"""Placeholder replaced by the nested JSON text: ``json.dumps`` itself stops at ~1,000 levels."""

NESTING_PLACES: dict[str, Callable[[], dict[str, Any]]] = {
    "prefetch value": lambda: patient_view(plain_prefetch(conditions=DEEP)),
    "resource field": lambda: patient_view(
        plain_prefetch(
            **{
                OBSERVATION_KEY: {
                    "resourceType": "Bundle",
                    "entry": [{"resource": {"resourceType": "Observation", "valueQuantity": DEEP}}],
                }
            }
        )
    ),
    "bundle entry": lambda: patient_view(
        plain_prefetch(conditions={"resourceType": "Bundle", "entry": [DEEP]})
    ),
    "extension": lambda: patient_view(plain_prefetch(), extension=DEEP),
    "draftOrders": lambda: {
        "hook": "order-select",
        "hookInstance": "x",
        "context": {"patientId": PATIENT_ID, "draftOrders": {"resourceType": "Bundle", "x": DEEP}},
        "prefetch": plain_prefetch(),
    },
}


def nested(depth: int, kind: str) -> str:
    """``depth`` levels of arrays or objects as JSON text."""
    if kind == "list":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


def send_deep(client: TestClient, place: str, depth: int, kind: str) -> None:
    """Deep nesting somewhere in the request: JSON orjson refuses is a 400, the rest is no 5xx."""
    body = NESTING_PLACES[place]()
    path = ORDER_SELECT if place == "draftOrders" else PATIENT_VIEW
    payload = encode(body).replace(f'"{DEEP}"'.encode(), nested(depth, kind).encode())
    try:
        orjson.loads(payload)
    except orjson.JSONDecodeError:
        too_deep = True
    else:
        too_deep = False
    response = post(client, path, payload)
    if too_deep:
        assert response.status_code == 400, response.text


@settings(FAST, max_examples=100)
@given(
    place=st.sampled_from(sorted(NESTING_PLACES)),
    depth=st.one_of(st.integers(50, 1_100), st.sampled_from([254, 255, 256, 1_020, 1_025, 5_000])),
    kind=st.sampled_from(["list", "dict"]),
)
def test_deep_nesting(client: TestClient, place: str, depth: int, kind: str) -> None:
    """50-1,100 levels of arrays or objects in five places, around orjson's limit of 1,024."""
    send_deep(client, place, depth, kind)


@pytest.mark.slow
@settings(SLOW, max_examples=500)
@given(
    place=st.sampled_from(sorted(NESTING_PLACES)),
    depth=st.integers(50, 20_000),
    kind=st.sampled_from(["list", "dict"]),
)
def test_deep_nesting_slow(client: TestClient, place: str, depth: int, kind: str) -> None:
    send_deep(client, place, depth, kind)


@pytest.mark.parametrize("depth", [ORJSON_MAX_DEPTH + 1, 100_000])
def test_json_deeper_than_orjson_reads_is_400(client: TestClient, depth: int) -> None:
    """Not a RecursionError, not a 500: orjson refuses the body and the service says why."""
    payload = encode(patient_view(plain_prefetch(conditions=DEEP)))
    payload = payload.replace(f'"{DEEP}"'.encode(), nested(depth, "list").encode())
    response = post(client, PATIENT_VIEW, payload)
    assert response.status_code == 400
    assert response.json()["issue"][0]["diagnostics"] == "the request body is not JSON"


# --- bodies that are not (quite) JSON ---------------------------------------------------------------

VALID = encode(patient_view(plain_prefetch()))
"""A request that answers 200; the raw bodies below are this one, broken in one place."""


def edited(old: bytes, new: bytes) -> bytes:
    """:data:`VALID` with ``old`` (which must be there) replaced by ``new``."""
    assert old in VALID, old
    return VALID.replace(old, new)


BIRTH_DATE = b'"1950-01-01"'
RAW_BODIES: dict[str, tuple[bytes, int | None]] = {
    # name: (body, the status it must get; None: any status below 500)
    "empty": (b"", 400),
    "null": (b"null", 400),
    "array": (b"[]", 400),
    "number": (b"1", 400),
    "string": (b'"patient-view"', 400),
    "NaN": (edited(BIRTH_DATE, b"NaN"), 400),
    "Infinity": (edited(BIRTH_DATE, b"-Infinity"), 400),
    "1e400": (edited(BIRTH_DATE, b"1e400"), 400),
    "400-digit integer": (edited(BIRTH_DATE, b"9" * 400), 400),
    "2**64": (edited(BIRTH_DATE, str(2**64).encode()), None),
    "lone surrogate": (edited(b"Practitioner/gp1", b"\\ud800"), 400),
    "invalid UTF-8": (edited(b"Practitioner/gp1", b"\xff\xfe"), 400),
    "byte-order mark": (b"\xef\xbb\xbf" + VALID, 400),
    "truncated": (VALID[: len(VALID) // 2], 400),
    "duplicate keys": (
        edited(b'"hook": "patient-view"', b'"hook": 1, "hook": "patient-view"'),
        200,
    ),
    "trailing garbage": (VALID + b" x", 400),
    "5 MB string": (edited(BIRTH_DATE, b'"' + b"9" * 5_000_000 + b'"'), 200),
}


@pytest.mark.parametrize("name", sorted(RAW_BODIES))
def test_raw_bodies(client: TestClient, name: str) -> None:
    """Bodies that are not JSON, not an object, or JSON orjson will not read (NaN, numbers
    beyond a double, lone surrogates, a BOM) are a 400; what it reads is no 5xx."""
    payload, status = RAW_BODIES[name]
    response = post(client, PATIENT_VIEW, payload)
    if status is not None:
        assert response.status_code == status, response.text


# --- next links ------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", LINK_URLS)
def test_next_links(client: TestClient, url: str) -> None:
    """A searchset with a ``next`` link is fetched from fhirServer only if the page is on it;
    any other link (another origin, the base itself, a relative path) is a 412, never a crash
    (fhirServer's own base was a 500 once: FhirRestClient refuses an empty relative URL)."""
    page = {"resourceType": "Bundle", "type": "searchset", "entry": []}
    page["link"] = [{"relation": "next", "url": url}]
    body = patient_view(plain_prefetch(conditions=page), fhirServer=FHIR_BASE)
    response = post(client, PATIENT_VIEW, encode(body))
    on_server = url.startswith(FHIR_BASE + "/") and url != FHIR_BASE + "/"
    assert response.status_code == (200 if on_server else 412), response.text
