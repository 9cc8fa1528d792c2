"""Feedback: request validation per CDS Hooks 2.0, idempotent storage, patient exceptions."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import ValidationError

from service.feedback import (
    _SELECT_OLD_FEEDBACK,
    EXCEPTION_REASON_CODES,
    OVERRIDE_REASON_SYSTEM,
    OVERRIDE_REASONS,
    PRUNE_BATCH,
    SCHEMA_VERSION,
    FeedbackRequest,
    FeedbackResult,
    FeedbackStore,
    FeedbackStoreError,
    IssuedCard,
    PruneResult,
    override_reason_codings,
    prune_once,
    prune_periodically,
)

SERVICE = "vejviser-patient-view"
CARD = "4e0a3a1e-3283-4575-ab82-028d55fe2719"
SUGGESTION = "e56e1945-20b3-4393-8503-a1a20fd73152"
WHEN = "2020-12-11T09:30:00Z"


def prune(store: FeedbackStore, limit: int = PRUNE_BATCH) -> PruneResult:
    """Everything past the window, as the service prunes it, with no pause between batches."""
    return anyio.run(prune_once, store, 0.0, limit)


def accepted(card: str = CARD, when: str = WHEN) -> dict[str, Any]:
    return {
        "card": card,
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": SUGGESTION}],
        "outcomeTimestamp": when,
    }


def overridden(card: str = CARD, code: str | None = None, when: str = WHEN) -> dict[str, Any]:
    item: dict[str, Any] = {"card": card, "outcome": "overridden", "outcomeTimestamp": when}
    if code is not None:
        item["overrideReason"] = {
            "reason": {"system": OVERRIDE_REASON_SYSTEM, "code": code},
            "userComment": "talt med patienten",
        }
    return item


def request(*items: dict[str, Any]) -> FeedbackRequest:
    return FeedbackRequest.model_validate({"feedback": list(items)})


def issued(card: str = CARD, patient: str = "pat-1", guideline: str = "dm2-hba1c") -> IssuedCard:
    return IssuedCard(
        card_uuid=card,
        service_id=SERVICE,
        hook_instance=str(uuid.uuid4()),
        patient_id=patient,
        guideline_id=guideline,
        guideline_version="2024.1",
        content_hash="sha256:abc",
        recommendation_id="measure-hba1c",
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FeedbackStore]:
    with FeedbackStore(tmp_path / "vejviser-feedback.sqlite") as opened:
        yield opened


def count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


# --- the request body ---------------------------------------------------------------------------


def test_spec_examples_parse() -> None:
    body = request(
        accepted(),
        {
            "card": "f6b95768-b1c8-40dc-8385-bf3504b82ffb",
            "outcome": "overridden",
            "outcomeTimestamp": WHEN,
        },
        {
            "card": "9368d37b-283f-44a0-93ea-547cebab93ed",
            "outcome": "overridden",
            "overrideReason": {
                "reason": {"code": "d7ecf885", "system": "https://example.com/override"},
                "userComment": "clinician entered comment",
            },
            "outcomeTimestamp": "1985-04-12T23:20:50.52Z",
        },
    )
    first, second, third = body.feedback
    assert first.accepted_suggestions is not None
    assert first.accepted_suggestions[0].id == SUGGESTION
    assert second.override_reason is None
    assert third.override_reason is not None
    assert third.override_reason.reason is not None
    assert third.override_reason.reason.code == "d7ecf885"
    assert third.override_reason.user_comment == "clinician entered comment"
    assert third.outcome_timestamp == datetime(1985, 4, 12, 23, 20, 50, 520000, tzinfo=UTC)


def test_unknown_fields_and_extensions_are_ignored() -> None:
    item = accepted() | {"extension": {"com.example.x": 1}, "access_token": "secret"}
    body = FeedbackRequest.model_validate(
        {"feedback": [item], "extension": {"com.example.y": True}, "fhirAuthorization": {}}
    )
    assert "secret" not in body.model_dump_json()


def test_timestamps_are_normalised_to_utc() -> None:
    (item,) = request(accepted(when="2020-12-11T10:30:00+01:00")).feedback
    assert item.outcome_timestamp == datetime(2020, 12, 11, 9, 30, tzinfo=UTC)
    (naive,) = request(accepted(when="2020-12-11T09:30:00")).feedback  # read as UTC
    assert naive.outcome_timestamp == item.outcome_timestamp


def test_card_uuid_is_lower_cased() -> None:
    (item,) = request(accepted(card=CARD.upper())).feedback
    assert item.card == CARD


def test_override_reason_comment_only_is_allowed() -> None:
    item = overridden() | {"overrideReason": {"userComment": "ikke nu"}}
    (parsed,) = request(item).feedback
    assert parsed.override_reason is not None
    assert parsed.override_reason.reason is None


def _without(item: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != key}


MALFORMED: dict[str, Any] = {
    "no feedback array": {},
    "empty feedback array": {"feedback": []},
    "feedback not an array": {"feedback": accepted()},
    "missing card": {"feedback": [_without(accepted(), "card")]},
    "card not a uuid": {"feedback": [accepted(card="card-1")]},
    "card urn form": {"feedback": [accepted(card=f"urn:uuid:{CARD}")]},
    "card a number": {"feedback": [accepted() | {"card": 42}]},
    "missing outcome": {"feedback": [_without(accepted(), "outcome")]},
    "bad outcome": {"feedback": [accepted() | {"outcome": "ignored"}]},
    "outcome wrong case": {"feedback": [accepted() | {"outcome": "Accepted"}]},
    "missing timestamp": {"feedback": [_without(accepted(), "outcomeTimestamp")]},
    "timestamp not a date": {"feedback": [accepted(when="yesterday")]},
    "timestamp date only": {"feedback": [accepted(when="2020-12-11")]},
    "timestamp impossible": {"feedback": [accepted(when="2020-13-45T00:00:00Z")]},
    "timestamp epoch number": {"feedback": [accepted() | {"outcomeTimestamp": 1607676600}]},
    "accepted without suggestions": {"feedback": [_without(accepted(), "acceptedSuggestions")]},
    "accepted with empty suggestions": {"feedback": [accepted() | {"acceptedSuggestions": []}]},
    "suggestion without id": {"feedback": [accepted() | {"acceptedSuggestions": [{}]}]},
    "suggestion id not a uuid": {"feedback": [accepted() | {"acceptedSuggestions": [{"id": "x"}]}]},
    "overrideReason with accepted": {
        "feedback": [accepted() | {"overrideReason": {"userComment": "nej"}}]
    },
    "acceptedSuggestions with overridden": {
        "feedback": [overridden() | {"acceptedSuggestions": [{"id": SUGGESTION}]}]
    },
    "overrideReason empty": {"feedback": [overridden() | {"overrideReason": {}}]},
    "overrideReason blank comment only": {
        "feedback": [overridden() | {"overrideReason": {"userComment": "  "}}]
    },
    "reason without code": {
        "feedback": [
            overridden() | {"overrideReason": {"reason": {"system": OVERRIDE_REASON_SYSTEM}}}
        ]
    },
    "reason without system": {
        "feedback": [overridden() | {"overrideReason": {"reason": {"code": "patient-declined"}}}]
    },
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_feedback_is_rejected(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        FeedbackRequest.model_validate(body)


def test_validation_error_names_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        FeedbackRequest.model_validate({"feedback": [accepted(), accepted(when="noon")]})
    (error,) = caught.value.errors()
    assert error["loc"] == ("feedback", 1, "outcomeTimestamp")


def test_too_many_items_are_rejected() -> None:
    items = [accepted(card=str(uuid.uuid4())) for _ in range(501)]
    with pytest.raises(ValidationError):
        FeedbackRequest.model_validate({"feedback": items})


def test_validates_from_json_bytes() -> None:
    raw = b'{"feedback":[{"card":"%s","outcome":"overridden","outcomeTimestamp":"%s"}]}' % (
        CARD.encode(),
        WHEN.encode(),
    )
    assert FeedbackRequest.model_validate_json(raw).feedback[0].outcome == "overridden"


# --- override reasons ---------------------------------------------------------------------------


def test_override_reasons_are_bilingual_codings_in_our_system() -> None:
    codes = [reason["code"] for reason in OVERRIDE_REASONS]
    assert codes == ["patient-declined", "not-suitable", "already-handled"]
    assert all(reason["system"] == OVERRIDE_REASON_SYSTEM for reason in OVERRIDE_REASONS)
    assert all(list(reason["display"]) == ["da", "en"] for reason in OVERRIDE_REASONS)
    da = override_reason_codings("da")
    en = override_reason_codings("en")
    assert da[0].display == "Patienten har fravalgt"
    assert en[0].display == "Patient declined"
    assert da[2].display == "Allerede håndteret"
    assert all(c.system and c.code and c.display for c in [*da, *en])  # CDS Hooks: all three
    assert {"patient-declined", "not-suitable"} == EXCEPTION_REASON_CODES
    assert "already-handled" not in EXCEPTION_REASON_CODES


# --- the store ----------------------------------------------------------------------------------


def test_schema_and_wal_on_open(tmp_path: Path) -> None:
    path = tmp_path / "fb.sqlite"
    FeedbackStore(path).close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"schema_version", "issued_cards", "feedback", "exceptions"} <= tables
    FeedbackStore(path).close()  # reopening adds no second version row
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM schema_version").fetchone()[0] == 1


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fb.sqlite"
    FeedbackStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(FeedbackStoreError, match="schema version"):
        FeedbackStore(path)


def test_record_cards(store: FeedbackStore) -> None:
    cards = [issued(str(uuid.uuid4())) for _ in range(3)]
    assert store.record_cards(cards) == 3
    assert store.record_cards(cards[:1]) == 0  # a retry keeps the first row
    assert store.record_cards([]) == 0
    assert count(store.path, "issued_cards") == 3


def test_accepted_feedback_is_stored(store: FeedbackStore) -> None:
    store.record_cards([issued()])
    result = store.record_feedback(SERVICE, request(accepted()))
    assert result == FeedbackResult(stored=1, duplicates=0, unknown_cards=0, exceptions=0)
    with sqlite3.connect(store.path) as conn:
        row = conn.execute(
            "SELECT card_uuid, outcome, accepted_suggestions, outcome_timestamp FROM feedback"
        ).fetchone()
    assert row == (CARD, "accepted", f'["{SUGGESTION}"]', "2020-12-11T09:30:00.000000Z")


def test_posted_twice_is_stored_once(store: FeedbackStore) -> None:
    store.record_cards([issued()])
    body = request(accepted(), overridden(code="patient-declined"))
    first = store.record_feedback(SERVICE, body)
    again = store.record_feedback(SERVICE, body)
    assert (first.stored, first.duplicates) == (2, 0)
    assert (again.stored, again.duplicates) == (0, 2)
    # the same instant written with another offset is the same feedback
    shifted = store.record_feedback(SERVICE, request(accepted(when="2020-12-11T10:30:00+01:00")))
    assert (shifted.stored, shifted.duplicates) == (0, 1)
    assert store.count_feedback() == 2
    assert store.count_feedback(SERVICE) == 2
    assert store.count_feedback("another-service") == 0
    assert len(store.exceptions_for("pat-1")) == 1


def test_duplicate_within_one_post_is_stored_once(store: FeedbackStore) -> None:
    result = store.record_feedback(SERVICE, request(accepted(), accepted()))
    assert (result.stored, result.duplicates) == (1, 1)


def test_a_later_action_on_the_same_card_is_new_feedback(store: FeedbackStore) -> None:
    store.record_feedback(SERVICE, request(overridden()))
    later = store.record_feedback(SERVICE, request(accepted(when="2020-12-12T08:00:00Z")))
    assert later.stored == 1
    assert count(store.path, "feedback") == 2


def test_patient_declined_creates_one_exception_for_the_right_patient(
    store: FeedbackStore,
) -> None:
    other = "11111111-2222-4333-8444-555555555555"
    store.record_cards([issued(CARD, patient="pat-1"), issued(other, patient="pat-2")])
    result = store.record_feedback(SERVICE, request(overridden(CARD, code="patient-declined")))
    assert result.exceptions == 1
    # the clinician overrides the same card again later: still one exception
    again = store.record_feedback(
        SERVICE, request(overridden(CARD, code="patient-declined", when="2020-12-12T08:00:00Z"))
    )
    assert (again.stored, again.exceptions) == (1, 0)

    (exception,) = store.exceptions_for("pat-1")
    assert exception.patient_id == "pat-1"
    assert exception.guideline_id == "dm2-hba1c"
    assert exception.recommendation_id == "measure-hba1c"
    assert exception.reason_code == "patient-declined"
    assert exception.card_uuid == CARD
    assert exception.recorded_at == datetime(2020, 12, 11, 9, 30, tzinfo=UTC)
    assert store.exceptions_for("pat-2") == []
    assert store.all_exceptions() == [exception]


def test_not_suitable_creates_an_exception(store: FeedbackStore) -> None:
    store.record_cards([issued()])
    store.record_feedback(SERVICE, request(overridden(code="not-suitable")))
    assert [e.reason_code for e in store.exceptions_for("pat-1")] == ["not-suitable"]


@pytest.mark.parametrize(
    "item",
    [
        overridden(code="already-handled"),
        overridden(),  # dismissed without a reason
        overridden() | {"overrideReason": {"userComment": "patienten ville ikke"}},
        overridden()
        | {
            "overrideReason": {
                "reason": {"system": "https://ehr.example/reasons", "code": "patient-declined"}
            }
        },
        accepted(),
    ],
    ids=["already-handled", "no-reason", "comment-only", "foreign-system", "accepted"],
)
def test_other_outcomes_create_no_exception(store: FeedbackStore, item: dict[str, Any]) -> None:
    store.record_cards([issued()])
    result = store.record_feedback(SERVICE, request(item))
    assert (result.stored, result.exceptions) == (1, 0)
    assert store.all_exceptions() == []


def test_unknown_card_is_stored_and_counted(store: FeedbackStore) -> None:
    store.record_cards([issued()])
    stranger = str(uuid.uuid4())
    result = store.record_feedback(
        SERVICE, request(overridden(CARD), overridden(stranger, code="patient-declined"))
    )
    assert result == FeedbackResult(stored=2, duplicates=0, unknown_cards=1, exceptions=0)
    assert count(store.path, "feedback") == 2
    assert store.all_exceptions() == []  # no patient to attach it to


def test_card_issued_by_another_service_is_unknown_here(store: FeedbackStore) -> None:
    store.record_cards([issued()])
    result = store.record_feedback("vejviser-order-sign", request(overridden(code="not-suitable")))
    assert (result.unknown_cards, result.exceptions) == (1, 0)


def test_card_without_guideline_creates_no_exception(store: FeedbackStore) -> None:
    store.record_cards(
        [IssuedCard(card_uuid=CARD, service_id=SERVICE, hook_instance="h", patient_id="pat-1")]
    )
    result = store.record_feedback(SERVICE, request(overridden(code="patient-declined")))
    assert (result.unknown_cards, result.exceptions) == (0, 0)


def test_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "vejviser-feedback.sqlite"
    with FeedbackStore(path) as first:
        first.record_cards([issued()])
        first.record_feedback(SERVICE, request(overridden(code="patient-declined")))
    with FeedbackStore(path) as second:
        (exception,) = second.exceptions_for("pat-1")
        assert exception.card_uuid == CARD
        again = second.record_feedback(SERVICE, request(overridden(code="patient-declined")))
        assert again == FeedbackResult(stored=0, duplicates=1, unknown_cards=0, exceptions=0)
        assert second.record_cards([issued()]) == 0


def test_concurrent_record_cards(store: FeedbackStore) -> None:
    threads, per_thread = 8, 50
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work() -> None:
        try:
            start.wait()
            for _ in range(per_thread):
                store.record_cards([issued(str(uuid.uuid4())) for _ in range(3)])
        except BaseException as err:  # surfaced below; a thread cannot fail the test itself
            errors.append(err)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    assert count(store.path, "issued_cards") == threads * per_thread * 3


def test_concurrent_feedback_and_cards_from_two_stores(tmp_path: Path) -> None:
    """Two stores on one file (two uvicorn workers): WAL and the busy timeout keep both working."""
    path = tmp_path / "fb.sqlite"
    with FeedbackStore(path) as one, FeedbackStore(path) as two:
        cards = [issued(str(uuid.uuid4()), patient=f"pat-{i}") for i in range(40)]

        def post(target: FeedbackStore, chunk: list[IssuedCard]) -> None:
            for card in chunk:
                target.record_cards([card])
                target.record_feedback(
                    SERVICE, request(overridden(card.card_uuid, code="patient-declined"))
                )

        workers = [
            threading.Thread(target=post, args=(one, cards[:20])),
            threading.Thread(target=post, args=(two, cards[20:])),
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert len(one.all_exceptions()) == 40


def test_no_patient_ids_in_info_logs(
    store: FeedbackStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.record_cards([issued(patient="0101501234")])
    with caplog.at_level(logging.DEBUG, logger="service.feedback"):
        store.record_feedback(SERVICE, request(overridden(code="patient-declined")))
    assert caplog.records
    assert "0101501234" not in caplog.text
    assert "talt med patienten" not in caplog.text  # free-text comments stay out too


def test_a_failed_write_is_kept_logged_once_and_cleared(
    store: FeedbackStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by QA (ops): a full disk made every write raise with nothing kept for /ready;
    now the failure is kept, logged once (not once per request) and cleared by a good write."""
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")
    big = [issued(str(uuid.uuid4()), patient="p" * 5000) for _ in range(3)]
    with caplog.at_level(logging.INFO, logger="service.feedback"):
        for _ in range(3):
            with pytest.raises(sqlite3.OperationalError):
                store.record_cards(big)
        assert store.write_error is not None and store.write_error[1] == "database or disk is full"
        assert not store._conn.in_transaction
        store._conn.execute("PRAGMA max_page_count = 1000000")
        assert store.record_cards(big) == 3
    assert store.write_error is None
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot be written" in m for m in messages) == 1
    assert sum("is written again" in m for m in messages) == 1


# --- retention ----------------------------------------------------------------------------------

WINDOW = timedelta(days=30)
ISSUED = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)


class Clock:
    """The store's clock, moved by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def card_at(card: str, when: datetime, patient: str = "0101501234") -> IssuedCard:
    return IssuedCard(card, SERVICE, "h", patient, "dm2-hba1c", "2024.1", "sha256:abc", "r", when)


def rows(path: Path, table: str, column: str) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute(f"SELECT {column} FROM {table}")}


def test_cards_past_the_feedback_window_are_pruned_but_feedback_and_exceptions_kept(
    tmp_path: Path,
) -> None:
    """Found by QA (ops): every card ever issued stayed in the file (~290 bytes each), so at a
    region's volume it grew without bound. A card no feedback names is deleted once it can no
    longer receive feedback; its feedback, and the exception a sweep reads, are never."""
    clock = Clock(ISSUED)
    with FeedbackStore(tmp_path / "f.sqlite", clock=clock, feedback_window=WINDOW) as store:
        unused = [str(uuid.uuid4()) for _ in range(7)]
        declined, accepted_card, recent = (str(uuid.uuid4()) for _ in range(3))
        store.record_cards([card_at(c, ISSUED) for c in [*unused, declined, accepted_card]])
        store.record_feedback(SERVICE, request(overridden(declined, code="patient-declined")))
        store.record_feedback(SERVICE, request(accepted(accepted_card)))
        store.record_feedback(SERVICE, request(accepted(str(uuid.uuid4()))))  # never issued
        exceptions = store.all_exceptions()
        records = store.feedback_records()
        assert prune(store) == PruneResult(0, 0)  # nothing is past the window yet

        clock.now = ISSUED + WINDOW + timedelta(seconds=1)
        store.record_cards([card_at(recent, clock.now)])
        # a batch looks at `limit` cards at most
        assert store.prune_card_batch(limit=2) == (2, True)
        assert prune(store, limit=2) == PruneResult(cards=5, unknown_feedback=1)
        assert prune(store) == PruneResult(0, 0)

        assert rows(store.path, "issued_cards", "card_uuid") == {declined, accepted_card, recent}
        assert store.count_feedback() == 2  # the feedback on a card never issued is gone
        assert store.all_exceptions() == exceptions and len(exceptions) == 1
        assert store.feedback_records() == records[:2]  # still tied to guideline version and hash


def test_feedback_after_the_window_makes_no_exception(tmp_path: Path) -> None:
    """A card can receive feedback within the window only: whether it was pruned yet (pruning
    runs hourly) must not decide whether an override takes a patient out of a denominator."""
    clock = Clock(ISSUED)
    with FeedbackStore(tmp_path / "f.sqlite", clock=clock, feedback_window=WINDOW) as store:
        store.record_cards([card_at(CARD, ISSUED)])
        clock.now = ISSUED + WINDOW + timedelta(seconds=1)
        late = store.record_feedback(SERVICE, request(overridden(code="patient-declined")))
        assert late == FeedbackResult(stored=1, duplicates=0, unknown_cards=1, exceptions=0)
        clock.now = ISSUED + WINDOW
        in_time = store.record_feedback(
            SERVICE, request(overridden(code="patient-declined", when="2026-10-31T12:00:00Z"))
        )
        assert (in_time.unknown_cards, in_time.exceptions) == (0, 1)


def made_up(count: int) -> list[str]:
    """Card ids the service never issued, as a misbehaving client posts them."""
    return [str(uuid.uuid4()) for _ in range(count)]


def test_feedback_on_unknown_cards_is_pruned_a_window_after_it_was_received(
    tmp_path: Path,
) -> None:
    """Found by QA: feedback on a made-up card id (500 a POST, from any authenticated client) was
    stored and never deleted, so the file grew without bound. It is deleted once it was received
    longer ago than the feedback window; its outcomeTimestamp (2020 here) is the client's word
    and does not count. Younger items are kept, and a later run deletes them in their turn."""
    clock = Clock(ISSUED)
    with FeedbackStore(tmp_path / "f.sqlite", clock=clock, feedback_window=WINDOW) as store:
        old, young = made_up(3), made_up(2)
        store.record_feedback(SERVICE, request(*map(accepted, old)))
        clock.now = ISSUED + timedelta(days=1)
        store.record_feedback(SERVICE, request(*map(accepted, young)))

        clock.now = ISSUED + WINDOW  # received exactly a window ago: not older than it
        assert prune(store) == PruneResult(0, 0)
        clock.now = ISSUED + WINDOW + timedelta(seconds=1)
        assert prune(store) == PruneResult(cards=0, unknown_feedback=3)
        assert rows(store.path, "feedback", "card_uuid") == set(young)
        clock.now += timedelta(days=1)
        assert prune(store) == PruneResult(cards=0, unknown_feedback=2)
        assert store.count_feedback() == 0


def test_feedback_on_an_issued_card_is_never_pruned(tmp_path: Path) -> None:
    """It records what a clinician decided, and may have made a patient exception: however old,
    it stays, with its card, while the same runs delete feedback on unknown cards around it.
    Late feedback on a card whose row is not deleted yet is feedback on an issued card too."""
    clock = Clock(ISSUED)
    with FeedbackStore(tmp_path / "f.sqlite", clock=clock, feedback_window=WINDOW) as store:
        declined, answered, late = (str(uuid.uuid4()) for _ in range(3))
        store.record_cards([card_at(c, ISSUED) for c in (declined, answered, late)])
        strangers = [accepted(card) for card in made_up(2)]
        store.record_feedback(
            SERVICE,
            request(strangers[0], overridden(declined, code="patient-declined"), strangers[1]),
        )
        store.record_feedback(SERVICE, request(accepted(answered)))
        clock.now = ISSUED + WINDOW + timedelta(minutes=5)  # before the hourly run
        store.record_feedback(SERVICE, request(overridden(late, code="not-suitable")))
        kept = [r for r in store.feedback_records() if r.guideline_id is not None]
        exceptions = store.all_exceptions()

        assert prune(store, limit=1) == PruneResult(cards=0, unknown_feedback=2)
        for years in (1, 10):
            clock.now = ISSUED + timedelta(days=365 * years)
            assert prune(store, limit=1) == PruneResult(0, 0)
        assert store.feedback_records() == kept and len(kept) == 3
        assert rows(store.path, "issued_cards", "card_uuid") == {declined, answered, late}
        assert store.all_exceptions() == exceptions and len(exceptions) == 1


def test_feedback_on_another_services_card_is_pruned_as_unknown(tmp_path: Path) -> None:
    """Issued means issued by the service the feedback was posted to, as for exceptions and
    provenance: such feedback names no patient there, and keeps no card from being pruned."""
    clock = Clock(ISSUED)
    with FeedbackStore(tmp_path / "f.sqlite", clock=clock, feedback_window=WINDOW) as store:
        store.record_cards([card_at(CARD, ISSUED)])
        store.record_feedback("vejviser-order-sign", request(overridden(code="not-suitable")))
        store.record_feedback(SERVICE, request(accepted()))
        clock.now = ISSUED + WINDOW + timedelta(seconds=1)
        assert prune(store) == PruneResult(cards=0, unknown_feedback=1)
        assert store.count_feedback() == store.count_feedback(SERVICE) == 1


def test_feedback_is_pruned_in_batches_of_the_limit_with_a_pause_between(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same bound on the lock as for cards: a batch looks at ``limit`` items at most, kept
    ones included, and a run pauses between batches so requests get the lock."""
    clock = Clock(ISSUED)
    with FeedbackStore(tmp_path / "f.sqlite", clock=clock, feedback_window=WINDOW) as store:
        store.record_cards([card_at(CARD, ISSUED)])
        items = [accepted(CARD), *(accepted(card) for card in made_up(6))]
        store.record_feedback(SERVICE, request(*items))
        clock.now = ISSUED + WINDOW * 2
        assert store.prune_feedback_batch(limit=3) == (2, True)  # the issued card's item is kept

        batches: list[tuple[int, bool]] = []
        original = store.prune_feedback_batch

        def recorded(limit: int) -> tuple[int, bool]:
            batches.append(original(limit))
            return batches[-1]

        monkeypatch.setattr(store, "prune_feedback_batch", recorded)
        started = time.monotonic()
        assert anyio.run(prune_once, store, 0.05, 3) == PruneResult(0, 4)
        assert time.monotonic() - started >= 0.05  # one pause, between the two feedback batches
        assert batches == [(3, True), (1, False)]
        assert store.count_feedback() == 1


def test_the_feedback_scan_walks_an_index(tmp_path: Path) -> None:
    """An hourly run must not read every feedback item ever stored; a file made before the
    index gets it when it is opened."""
    path = tmp_path / "f.sqlite"
    FeedbackStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP INDEX feedback_received_at")
    FeedbackStore(path).close()
    with sqlite3.connect(path) as conn:
        plan = conn.execute(f"EXPLAIN QUERY PLAN {_SELECT_OLD_FEEDBACK}", ("", "", 0, 1))
        details = " ".join(row[3] for row in plan)
    assert "INDEX feedback_received_at" in details
    assert "SCAN f" not in details


def test_without_a_window_nothing_is_pruned(tmp_path: Path) -> None:
    """What the sweep opens the file with: it must never delete from the service's file."""
    with FeedbackStore(tmp_path / "f.sqlite") as store:
        store.record_cards([card_at(CARD, datetime(2000, 1, 1, tzinfo=UTC))])
        store.record_feedback(SERVICE, request(accepted(str(uuid.uuid4()))))
        assert prune(store) == PruneResult(0, 0)
        assert store.prune_feedback_batch() == (0, False)
        assert count(store.path, "issued_cards") == 1
        assert store.count_feedback() == 1


def test_pruning_logs_counts_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock(ISSUED)
    with FeedbackStore(tmp_path / "f.sqlite", clock=clock, feedback_window=WINDOW) as store:
        store.record_cards([card_at(str(uuid.uuid4()), ISSUED) for _ in range(3)])
        strangers = [overridden(card, code="not-suitable") for card in made_up(2)]
        store.record_feedback(SERVICE, request(*strangers))
        clock.now = ISSUED + WINDOW * 2
        with caplog.at_level(logging.INFO, logger="service.feedback"):
            assert anyio.run(prune_once, store) == PruneResult(cards=3, unknown_feedback=2)
    (record,) = caplog.records
    assert record.getMessage().startswith(
        "feedback database: 3 issued card(s) without feedback and 2 feedback item(s) on unknown"
        " cards older than 30 day(s) deleted in "
    )
    assert record.getMessage().endswith(" s (2 batch(es))")
    assert "0101501234" not in caplog.text
    assert "talt med patienten" not in caplog.text


def test_a_failed_prune_is_logged_and_tried_again_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Housekeeping must not stop the service: an error in the periodic task would end the
    application's task group, and with it every CDS call."""
    clock = Clock(ISSUED + WINDOW * 2)
    with FeedbackStore(tmp_path / "f.sqlite", clock=clock, feedback_window=WINDOW) as store:
        store.record_cards([card_at(CARD, ISSUED)])
        store._conn.execute("PRAGMA query_only = ON")  # as a read-only file

        async def run_a_while() -> None:
            with anyio.move_on_after(0.5):
                await prune_periodically(store, interval=0.05)

        with caplog.at_level(logging.INFO, logger="service.feedback"):
            anyio.run(run_a_while)
        failures = [r for r in caplog.records if "pruning failed" in r.getMessage()]
        assert len(failures) >= 2
        assert failures[0].getMessage() == (
            "feedback database: pruning failed (attempt to write a readonly database); "
            "trying again in 0.05 s"
        )
        assert store.write_error is not None  # and /ready shows it
        store._conn.execute("PRAGMA query_only = OFF")
        assert prune(store) == PruneResult(cards=1, unknown_feedback=0)
