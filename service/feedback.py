"""CDS Hooks 2.0 feedback: the request body, the cards we issued, and patient exceptions.

Why this exists: a card is only useful if we learn what the clinician did with it. The service
records every card it returns (so later feedback can be tied to a patient and a guideline version),
stores the feedback the EHR posts to ``{base}/cds-services/{id}/feedback`` idempotently, and turns
an override meaning "the patient declined" or "not suitable for this patient" into a patient-level
exception. Following the QOF "personalised care adjustment", an exception removes the patient from
that guideline's indicator denominators, never from its register; population sweeps read them back
through :meth:`FeedbackStore.all_exceptions`.

Retention: a card can receive feedback for ``feedback_window`` after it was issued (the setting
``feedback_window_days``); after that its row is deleted (:func:`prune_periodically`) unless
feedback names it. Feedback on a card this service never issued is deleted once it was received
longer ago than the same window: it names no patient, and any authenticated client can post it,
500 items at a time. Feedback on an issued card and patient exceptions are never deleted: they
grow with what clinicians do, not with every chart opened, and a sweep depends on the exceptions.

Privacy: the store keeps no tokens (the request models drop every field they do not know), and it
never logs patient ids or free-text comments.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, Final, Literal, NoReturn, Self, TypedDict

import anyio
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

logger = logging.getLogger(__name__)

# --- override reasons ---------------------------------------------------------------------------

# Illustrative URI: Vejviser has no published CodeSystem yet. It must be absolute and stable, because
# feedback is matched on (system, code); change it only together with a data migration.
OVERRIDE_REASON_SYSTEM: Final = "https://vejviser.dk/fhir/CodeSystem/override-reason"


class Coding(BaseModel):
    """A CDS Hooks Coding (system and code required by the spec, display optional on input)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    system: Annotated[str, Field(min_length=1)]
    code: Annotated[str, Field(min_length=1)]
    display: str | None = None


class BilingualCoding(TypedDict):
    """An override reason as the service offers it: a Coding whose display is per language."""

    system: str
    code: str
    display: dict[str, str]  # {"da": ..., "en": ...}, Danish first like every text in Vejviser


OVERRIDE_REASONS: Final[tuple[BilingualCoding, ...]] = (
    {
        "system": OVERRIDE_REASON_SYSTEM,
        "code": "patient-declined",
        "display": {"da": "Patienten har fravalgt", "en": "Patient declined"},
    },
    {
        "system": OVERRIDE_REASON_SYSTEM,
        "code": "not-suitable",
        "display": {"da": "Ikke relevant for denne patient", "en": "Not suitable for this patient"},
    },
    {
        "system": OVERRIDE_REASON_SYSTEM,
        "code": "already-handled",
        "display": {"da": "Allerede håndteret", "en": "Already handled"},
    },
)

# Codes that record a patient exception (QOF: informed dissent, unsuitable). "already-handled" is
# deliberately absent: the recommendation was met elsewhere, so the patient stays in the denominator
# and the numerator should pick the action up from the record.
EXCEPTION_REASON_CODES: Final[frozenset[str]] = frozenset({"patient-declined", "not-suitable"})


def override_reason_codings(language: str = "da") -> list[Coding]:
    """``card.overrideReasons`` for cards rendered in ``language`` (da | en)."""
    key = "en" if language == "en" else "da"
    return [
        Coding(system=r["system"], code=r["code"], display=r["display"][key])
        for r in OVERRIDE_REASONS
    ]


def creates_exception(reason: Coding) -> bool:
    """Only our own codes count: a client-defined reason never removes a patient from a count."""
    return reason.system == OVERRIDE_REASON_SYSTEM and reason.code in EXCEPTION_REASON_CODES


# --- request models -----------------------------------------------------------------------------

# One POST reports what one user did with one response's cards; a bound keeps a bad client cheap.
MAX_FEEDBACK_ITEMS: Final = 500

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})?")


def _canonical_uuid(value: str) -> str:
    """Card and suggestion ids are uuids; lower case so "ABC..." and "abc..." are one card."""
    if not _UUID.fullmatch(value):
        raise ValueError("must be a uuid (8-4-4-4-12 hexadecimal digits)")
    return value.lower()


def _utc_datetime(value: Any) -> datetime:
    """RFC 3339 date-time, returned in UTC.

    The spec asks for UTC with an offset; a value without one is read as UTC rather than rejected,
    because a rejected POST is not retried and the override it carried would be lost.
    """
    if not isinstance(value, str) or not _RFC3339.fullmatch(value.upper()):
        raise ValueError("must be an RFC 3339 date-time, e.g. 2020-12-11T09:30:00Z")
    try:
        parsed = datetime.fromisoformat(value.upper())
    except ValueError as err:
        raise ValueError(f"not a valid date-time: {err}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise ValueError("is outside the years 1-9999 in UTC") from None


def _blank_to_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


Uuid = Annotated[str, AfterValidator(_canonical_uuid)]
UtcDateTime = Annotated[datetime, BeforeValidator(_utc_datetime)]


class AcceptedSuggestion(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: Uuid


class OverrideReason(BaseModel):
    """Why the user dismissed a card: a reason Coding, a free-text comment, or both (cds-fb-3)."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    reason: Coding | None = None
    user_comment: Annotated[str | None, BeforeValidator(_blank_to_none)] = Field(
        default=None, alias="userComment"
    )

    @model_validator(mode="after")
    def _reason_or_comment(self) -> Self:
        if self.reason is None and self.user_comment is None:
            raise ValueError("overrideReason needs a reason, a userComment, or both")
        return self


class FeedbackItem(BaseModel):
    """One end-user interaction with one card (CDS Hooks 2.0 "Feedback")."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    card: Uuid
    outcome: Literal["accepted", "overridden"]
    accepted_suggestions: tuple[AcceptedSuggestion, ...] | None = Field(
        default=None, alias="acceptedSuggestions"
    )
    override_reason: OverrideReason | None = Field(default=None, alias="overrideReason")
    outcome_timestamp: UtcDateTime = Field(alias="outcomeTimestamp")

    @model_validator(mode="after")
    def _consistent_outcome(self) -> Self:
        """accepted needs suggestions (cds-fb-2); a card is either accepted or overridden."""
        if self.outcome == "accepted":
            if not self.accepted_suggestions:
                raise ValueError("acceptedSuggestions is required (one or more) when accepted")
            if self.override_reason is not None:
                raise ValueError("overrideReason is only allowed when the outcome is overridden")
        elif self.accepted_suggestions:
            raise ValueError("acceptedSuggestions is only allowed when the outcome is accepted")
        return self


class FeedbackRequest(BaseModel):
    """The body POSTed to ``{base}/cds-services/{id}/feedback``; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    feedback: Annotated[list[FeedbackItem], Field(min_length=1, max_length=MAX_FEEDBACK_ITEMS)]


# --- store records ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IssuedCard:
    """A card the service returned: what feedback on its uuid is about."""

    card_uuid: str
    service_id: str
    hook_instance: str
    patient_id: str
    guideline_id: str | None = None
    guideline_version: str | None = None
    content_hash: str | None = None
    recommendation_id: str | None = None
    issued_at: datetime | None = None  # None: the store's clock at record time


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    """What one feedback POST did. ``stored + duplicates`` is the number of items posted."""

    stored: int
    duplicates: int
    # items whose card this service never issued, or issued longer ago than the feedback window
    # (stored all the same, but no patient exception)
    unknown_cards: int
    exceptions: int = 0  # patient exceptions newly recorded


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What one pruning run deleted: issued cards no feedback names, and feedback on cards this
    service never issued."""

    cards: int
    unknown_feedback: int


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    """A stored feedback item with the provenance of the card it is about (None: a card this
    service never issued)."""

    service_id: str
    card_uuid: str
    outcome: str
    override_code: str | None
    outcome_timestamp: datetime
    guideline_id: str | None
    guideline_version: str | None
    content_hash: str | None
    recommendation_id: str | None


@dataclass(frozen=True, slots=True)
class PatientException:
    """A patient excepted from a guideline's indicator denominators (not from its register)."""

    patient_id: str
    guideline_id: str
    recommendation_id: str | None
    reason_code: str
    recorded_at: datetime  # when the clinician overrode the card (the feedback's outcomeTimestamp)
    card_uuid: str


class FeedbackStoreError(RuntimeError):
    """The store file cannot be used (e.g. written by a newer Vejviser)."""


# --- the store ----------------------------------------------------------------------------------

SCHEMA_VERSION: Final = 1

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS issued_cards (
    card_uuid TEXT PRIMARY KEY,
    service_id TEXT NOT NULL,
    hook_instance TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    guideline_id TEXT,
    guideline_version TEXT,
    content_hash TEXT,
    recommendation_id TEXT,
    issued_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS issued_cards_issued_at ON issued_cards (issued_at);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY,
    service_id TEXT NOT NULL,
    card_uuid TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('accepted', 'overridden')),
    accepted_suggestions TEXT,
    override_code TEXT,
    override_system TEXT,
    override_display TEXT,
    user_comment TEXT,
    outcome_timestamp TEXT NOT NULL,
    received_at TEXT NOT NULL,
    UNIQUE (service_id, card_uuid, outcome, outcome_timestamp)
);
CREATE INDEX IF NOT EXISTS feedback_card ON feedback (card_uuid);
CREATE INDEX IF NOT EXISTS feedback_received_at ON feedback (received_at);
CREATE TABLE IF NOT EXISTS exceptions (
    patient_id TEXT NOT NULL,
    guideline_id TEXT NOT NULL,
    recommendation_id TEXT,
    reason_code TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    card_uuid TEXT NOT NULL,
    UNIQUE (card_uuid)
);
CREATE INDEX IF NOT EXISTS exceptions_patient ON exceptions (patient_id);
"""

_INSERT_CARD: Final = (
    "INSERT OR IGNORE INTO issued_cards (card_uuid, service_id, hook_instance, patient_id,"
    " guideline_id, guideline_version, content_hash, recommendation_id, issued_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_FEEDBACK: Final = (
    "INSERT OR IGNORE INTO feedback (service_id, card_uuid, outcome, accepted_suggestions,"
    " override_code, override_system, override_display, user_comment, outcome_timestamp,"
    " received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_EXCEPTION: Final = (
    "INSERT OR IGNORE INTO exceptions (patient_id, guideline_id, recommendation_id, reason_code,"
    " recorded_at, card_uuid) VALUES (?, ?, ?, ?, ?, ?)"
)
_SELECT_EXCEPTIONS: Final = (
    "SELECT patient_id, guideline_id, recommendation_id, reason_code, recorded_at, card_uuid"
    " FROM exceptions"
)
# The next cards issued before the cutoff, after the scan's cursor (issued_at, rowid), each with
# whether feedback names it. Walks the issued_at index; the EXISTS uses feedback's card index.
_SELECT_OLD_CARDS: Final = (
    "SELECT c.rowid, c.issued_at, EXISTS (SELECT 1 FROM feedback f"
    " WHERE f.card_uuid = c.card_uuid AND f.service_id = c.service_id)"
    " FROM issued_cards c WHERE c.issued_at < ? AND (c.issued_at, c.rowid) > (?, ?)"
    " ORDER BY c.issued_at, c.rowid LIMIT ?"
)
# The same for feedback received before the cutoff, each with whether this service issued its
# card. Walks the received_at index; the EXISTS uses issued_cards' primary key.
_SELECT_OLD_FEEDBACK: Final = (
    "SELECT f.id, f.received_at, EXISTS (SELECT 1 FROM issued_cards c"
    " WHERE c.card_uuid = f.card_uuid AND c.service_id = f.service_id)"
    " FROM feedback f WHERE f.received_at < ? AND (f.received_at, f.id) > (?, ?)"
    " ORDER BY f.received_at, f.id LIMIT ?"
)

#: Issued cards, or feedback items, looked at per pruning transaction: the store's lock, which a
#: request recording its cards waits for on the event loop, is held about 2 ms (measured: 200
#: cards a batch, median 2.3 ms, 17 ms at most when SQLite checkpointed its WAL; 500 took 5.6 ms).
#: 200 feedback items on unknown cards take about 1.5 times as long as 200 cards (measured
#: 2026-11-28 side by side: median 9.2 ms and 6.0 ms on a loaded 2-core machine).
PRUNE_BATCH: Final = 200
#: How often the service prunes after the run at start-up.
PRUNE_INTERVAL_SECONDS: Final = 3600.0
#: The pause between two batches: requests get the lock, and a first prune of a large file does
#: not take a core while it runs.
PRUNE_PAUSE_SECONDS: Final = 0.01


def _timestamp(moment: datetime) -> str:
    """Fixed-width UTC text, so equal instants are equal keys and text order is time order."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _utc_now() -> datetime:
    return datetime.now(UTC)


class FeedbackStore:
    """Issued cards, feedback and patient exceptions in one SQLite file.

    Thread-safe: one connection guarded by a lock. SQLite serialises writers anyway, so a lock costs
    nothing in throughput and spares us busy-retries and per-thread connections to track; WAL lets
    other processes (a sweep, a second worker) read while we write. Every method is a short
    transaction, cheap enough to call from an async handler directly or via ``anyio.to_thread``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], datetime] = _utc_now,
        timeout: float = 5.0,
        feedback_window: timedelta | None = None,
    ) -> None:
        """``feedback_window``: how long after issue a card can receive feedback (None: for ever,
        and nothing is pruned; what a sweep reading the exceptions needs)."""
        self.path = Path(path)
        self._clock = clock
        self.feedback_window = feedback_window
        self._lock = threading.Lock()
        # Where each pruning scan stopped, by table ((issued_at, rowid) of cards, (received_at, id)
        # of feedback): every row before it is either gone or kept for good (a card with feedback,
        # feedback on an issued card), so later batches and runs do not walk those rows again.
        self._prune_cursors: dict[str, tuple[str, int]] = {
            "issued_cards": ("", 0),
            "feedback": ("", 0),
        }
        #: When the last write failed and why (disk full, read-only file); None once one succeeds.
        self.write_error: tuple[datetime, str] | None = None
        # Autocommit mode: transactions are opened explicitly, so none is left open by accident.
        self._conn = sqlite3.connect(
            self.path, timeout=timeout, isolation_level=None, check_same_thread=False
        )
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives an application crash; only an OS crash or power loss can
            # drop the last commits. That is the right trade for a write on every CDS request.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._create_schema()
        except BaseException:
            self._conn.close()
            raise

    def _create_schema(self) -> None:
        with self._transaction() as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
            if row[0] is None:
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif row[0] > SCHEMA_VERSION:
                raise FeedbackStoreError(
                    f"{self.path} has feedback schema version {row[0]}; this Vejviser knows "
                    f"version {SCHEMA_VERSION} and will not write to it"
                )

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` under the store lock; commit on success, roll back on error (a
        failed COMMIT too, so a full disk does not leave a transaction open for the next write)."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                    self._conn.execute("COMMIT")
                finally:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                self._write_failed(str(exc))
                raise
            self._write_succeeded()

    def _write_failed(self, error: str) -> None:
        """Keep the failure for ``/ready`` and log it once per distinct error, not per request."""
        if self.write_error is None or self.write_error[1] != error:
            logger.error("feedback database %s cannot be written: %s", self.path, error)
        self.write_error = (self._clock(), error)

    def _write_succeeded(self) -> None:
        if self.write_error is not None:
            logger.info("feedback database %s is written again", self.path)
        self.write_error = None

    # --- writing --------------------------------------------------------------------------------

    def record_cards(self, cards: Sequence[IssuedCard]) -> int:
        """Remember the cards of one response; returns how many were new.

        Runs on every CDS request, so it is one ``executemany`` in one transaction. A uuid already
        recorded keeps its first row: card uuids are unique, so a repeat is a retry, not news.
        """
        if not cards:
            return 0
        now = _timestamp(self._clock())
        rows = [
            (
                card.card_uuid.lower(),
                card.service_id,
                card.hook_instance,
                card.patient_id,
                card.guideline_id,
                card.guideline_version,
                card.content_hash,
                card.recommendation_id,
                now if card.issued_at is None else _timestamp(card.issued_at),
            )
            for card in cards
        ]
        with self._transaction() as conn:
            return conn.executemany(_INSERT_CARD, rows).rowcount

    def record_feedback(self, service_id: str, request: FeedbackRequest) -> FeedbackResult:
        """Store a feedback POST idempotently and derive patient exceptions from it.

        The natural key (service, card, outcome, outcomeTimestamp) makes a re-post a no-op. Feedback
        on a card this service never issued (issued before the store existed, or by another
        service) is stored all the same - the spec has the service accept it - but, with no patient
        to attach it to, it never creates an exception. So is feedback on a card issued longer ago
        than the feedback window: whether the card was pruned yet must not decide an exception.
        """
        now = self._clock()
        received_at = _timestamp(now)
        uuids = sorted({item.card for item in request.feedback})
        stored = duplicates = unknown = exceptions = 0
        placeholders = ",".join("?" * len(uuids))
        sql = (
            "SELECT card_uuid, patient_id, guideline_id, recommendation_id"
            f" FROM issued_cards WHERE service_id = ? AND card_uuid IN ({placeholders})"
        )
        params: tuple[str, ...] = (service_id, *uuids)
        if self.feedback_window is not None:
            sql += " AND issued_at >= ?"
            params += (_timestamp(now - self.feedback_window),)
        with self._transaction() as conn:
            issued = {row[0]: row[1:] for row in conn.execute(sql, params)}
            for item in request.feedback:
                reason = item.override_reason.reason if item.override_reason else None
                comment = item.override_reason.user_comment if item.override_reason else None
                suggestions = (
                    json.dumps([s.id for s in item.accepted_suggestions])
                    if item.accepted_suggestions
                    else None
                )
                outcome_at = _timestamp(item.outcome_timestamp)
                cursor = conn.execute(
                    _INSERT_FEEDBACK,
                    (
                        service_id,
                        item.card,
                        item.outcome,
                        suggestions,
                        reason.code if reason else None,
                        reason.system if reason else None,
                        reason.display if reason else None,
                        comment,
                        outcome_at,
                        received_at,
                    ),
                )
                if cursor.rowcount:
                    stored += 1
                else:
                    duplicates += 1
                card = issued.get(item.card)
                if card is None:
                    unknown += 1
                    continue
                patient_id, guideline_id, recommendation_id = card
                if (
                    item.outcome == "overridden"
                    and reason is not None
                    and creates_exception(reason)
                    and guideline_id
                ):
                    cursor = conn.execute(
                        _INSERT_EXCEPTION,
                        (
                            patient_id,
                            guideline_id,
                            recommendation_id,
                            reason.code,
                            outcome_at,
                            item.card,
                        ),
                    )
                    exceptions += cursor.rowcount
        result = FeedbackResult(stored, duplicates, unknown, exceptions)
        # Counts only: patient ids and comments stay out of the log.
        logger.info(
            "feedback for %s: %d stored, %d duplicate, %d on unknown cards, %d new exceptions",
            service_id,
            result.stored,
            result.duplicates,
            result.unknown_cards,
            result.exceptions,
        )
        return result

    # --- pruning --------------------------------------------------------------------------------

    def prune_card_batch(self, limit: int = PRUNE_BATCH) -> tuple[int, bool]:
        """Delete issued cards that can no longer receive feedback, looking at ``limit`` at most;
        returns how many were deleted and whether more old cards may remain.

        Why a card with feedback is kept: it is that feedback's patient and provenance (guideline
        version, content hash: :meth:`feedback_records`). Exceptions are never touched: a sweep
        reads them, and they carry their own patient and guideline.
        """
        return self._prune_batch("issued_cards", _SELECT_OLD_CARDS, limit)

    def prune_feedback_batch(self, limit: int = PRUNE_BATCH) -> tuple[int, bool]:
        """Delete feedback received longer ago than the window on cards this service never
        issued, looking at ``limit`` items at most; returns as :meth:`prune_card_batch` does.

        Why: such feedback names no patient and makes no exception, yet an authenticated client
        can post any number of made-up card ids. Feedback on an issued card is kept, as its card
        is: neither pruning deletes the other's reason to keep a row.
        """
        return self._prune_batch("feedback", _SELECT_OLD_FEEDBACK, limit)

    def _prune_batch(self, table: str, select: str, limit: int) -> tuple[int, bool]:
        """Delete the rows ``select`` finds before the cutoff and marks as not kept.

        One short transaction per batch, so the lock is never held for long; the scan goes on
        from the last batch's cursor. A row recorded later with a time before the cursor (an
        explicit ``issued_at``, a clock set back) waits for the next process to be pruned.
        """
        if self.feedback_window is None:
            return 0, False
        cutoff = _timestamp(self._clock() - self.feedback_window)
        with self._transaction() as conn:
            rows = conn.execute(select, (cutoff, *self._prune_cursors[table], limit)).fetchall()
            unused = [(rowid,) for rowid, _, kept in rows if not kept]
            conn.executemany(f"DELETE FROM {table} WHERE rowid = ?", unused)
        if rows:
            self._prune_cursors[table] = (rows[-1][1], rows[-1][0])
        return len(unused), len(rows) == limit

    # --- reading --------------------------------------------------------------------------------

    def count_feedback(self, service_id: str | None = None) -> int:
        """How many feedback rows are stored (for one service, or all): for health pages and tests."""
        sql, params = "SELECT count(*) FROM feedback", ()
        if service_id is not None:
            sql, params = f"{sql} WHERE service_id = ?", (service_id,)
        with self._lock:
            return int(self._conn.execute(sql, params).fetchone()[0])

    def feedback_records(self) -> list[FeedbackRecord]:
        """Every feedback item, oldest first, naming the guideline id, version and content hash
        of the file that produced the card (joined from the card as it was issued)."""
        sql = (
            "SELECT f.service_id, f.card_uuid, f.outcome, f.override_code, f.outcome_timestamp,"
            " c.guideline_id, c.guideline_version, c.content_hash, c.recommendation_id"
            " FROM feedback f LEFT JOIN issued_cards c"
            " ON c.card_uuid = f.card_uuid AND c.service_id = f.service_id"
            " ORDER BY f.id"
        )
        with self._lock:
            rows = self._conn.execute(sql).fetchall()
        return [
            FeedbackRecord(
                service_id=row[0],
                card_uuid=row[1],
                outcome=row[2],
                override_code=row[3],
                outcome_timestamp=datetime.fromisoformat(row[4]),
                guideline_id=row[5],
                guideline_version=row[6],
                content_hash=row[7],
                recommendation_id=row[8],
            )
            for row in rows
        ]

    def exceptions_for(self, patient_id: str) -> list[PatientException]:
        """One patient's exceptions, oldest first (what a patient-view card should respect)."""
        return self._read_exceptions(
            f"{_SELECT_EXCEPTIONS} WHERE patient_id = ? ORDER BY recorded_at, card_uuid",
            (patient_id,),
        )

    def all_exceptions(self) -> list[PatientException]:
        """Every exception, by patient then time: the input a population sweep joins against."""
        return self._read_exceptions(
            f"{_SELECT_EXCEPTIONS} ORDER BY patient_id, recorded_at, card_uuid", ()
        )

    def _read_exceptions(self, sql: str, params: tuple[str, ...]) -> list[PatientException]:
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        return [
            PatientException(
                patient_id=row[0],
                guideline_id=row[1],
                recommendation_id=row[2],
                reason_code=row[3],
                recorded_at=datetime.fromisoformat(row[4]),
                card_uuid=row[5],
            )
            for row in rows
        ]

    # --- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --- retention in the service ---------------------------------------------------------------------


async def prune_once(
    store: FeedbackStore, pause: float = PRUNE_PAUSE_SECONDS, limit: int = PRUNE_BATCH
) -> PruneResult:
    """Prune every card, then every feedback item on an unknown card, past the feedback window,
    and log the counts (never a patient id) when there was something to delete: an hourly
    "0 deleted" would be noise among the request lines."""
    if store.feedback_window is None:
        return PruneResult(0, 0)
    started = time.monotonic()
    cards, card_batches = await _prune_in_batches(store.prune_card_batch, pause, limit)
    unknown, feedback_batches = await _prune_in_batches(store.prune_feedback_batch, pause, limit)
    if cards or unknown:
        logger.info(
            "feedback database: %d issued card(s) without feedback and %d feedback item(s) on"
            " unknown cards older than %g day(s) deleted in %.1f s (%d batch(es))",
            cards,
            unknown,
            store.feedback_window.total_seconds() / 86_400,
            time.monotonic() - started,
            card_batches + feedback_batches,
        )
    return PruneResult(cards, unknown)


async def _prune_in_batches(
    prune_batch: Callable[[int], tuple[int, bool]], pause: float, limit: int
) -> tuple[int, int]:
    """Run ``prune_batch`` until nothing old is left; returns rows deleted and batches run.

    Why batches off the event loop: a first prune of a file that grew for months deletes millions
    of rows; in one transaction it would hold the lock, and every request recording its cards,
    for seconds."""
    deleted = batches = 0
    more = True
    while more:
        count, more = await anyio.to_thread.run_sync(prune_batch, limit)
        deleted += count
        batches += 1
        if more:
            await anyio.sleep(pause)
    return deleted, batches


async def prune_periodically(
    store: FeedbackStore, interval: float = PRUNE_INTERVAL_SECONDS
) -> NoReturn:
    """Prune at start-up, then every ``interval`` seconds, until cancelled. A failure is logged
    and tried again next time, never raised: housekeeping must not stop decision support. A
    database error (a locked or read-only file) is one line, as the store keeps it for ``/ready``;
    anything else is a bug, logged with its traceback."""
    while True:
        try:
            await prune_once(store)
        except sqlite3.Error as error:
            logger.warning(
                "feedback database: pruning failed (%s); trying again in %g s", error, interval
            )
        except Exception:
            logger.exception("feedback database: pruning failed; trying again in %g s", interval)
        await anyio.sleep(interval)
