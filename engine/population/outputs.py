"""What a population sweep publishes, as rows: pure functions from engine outcomes to file contents.

Why pure: everything that decides *what* a quality unit sees - which patients are on a practice's
list and why, how indicators are counted and suppressed, what changed between two dates - is
decided here without DuckDB or a disk, so it is testable in microseconds and the same on every
engine. :mod:`engine.population.run` only queries, writes and publishes.

The closed room (DESIGN principle 6) is encoded in the row builders: lists are keyed by the
patient's own practice; aggregate rows above practice level are suppressed below a threshold.
See docs/sweeps.md for the rules in words.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Protocol

import pyarrow as pa

from engine.population.outcomes import PopulationOutcome
from rules import types as ty
from rules.rendering import render
from rules.tree import CompiledGuideline, Template

LEVELS = ("practice", "cluster", "all")
ALL = "all"
Z95 = 1.959963984540054  # the 97.5th percentile of the standard normal distribution
IN_DENOMINATOR = frozenset({"numerator", "denominator"})
SLOT_UNAVAILABLE = "…"  # a template slot the sweep cannot compute (never happens in the library)


# -- exceptions from CDS feedback ----------------------------------------------------------------


class ExceptionLike(Protocol):
    """What the runner needs of :class:`service.feedback.PatientException` (kept structural so the
    engine does not import the service)."""

    @property
    def patient_id(self) -> str: ...
    @property
    def guideline_id(self) -> str: ...
    @property
    def recommendation_id(self) -> str | None: ...
    @property
    def reason_code(self) -> str: ...
    @property
    def recorded_at(self) -> dt.datetime: ...


ExceptionReasons = Mapping[tuple[str, str], tuple[str, ...]]
"""(patient, guideline id) -> the override reason codes in force for it."""


def exceptions_in_force(exceptions: Iterable[ExceptionLike], as_of: dt.date) -> ExceptionReasons:
    """Exceptions recorded on or before the reference date, so a sweep of an earlier date gives
    the same answer whenever it is rerun (and the over-time comparison shows when one began)."""
    found: dict[tuple[str, str], set[str]] = defaultdict(set)
    for e in exceptions:
        if e.recorded_at.date() <= as_of:
            found[(e.patient_id, e.guideline_id)].add(e.reason_code)
    return {key: tuple(sorted(codes)) for key, codes in found.items()}


def apply_exceptions(outcome: PopulationOutcome, reasons: ExceptionReasons) -> PopulationOutcome:
    """A patient excepted from a guideline leaves its indicator denominators, never its register
    (QOF's personalised care adjustment); recommendations still fire and are marked on the list."""
    if not outcome.in_register or (outcome.patient, outcome.guideline) not in reasons:
        return outcome
    indicators = tuple(
        (indicator, "excepted" if membership in IN_DENOMINATOR else membership)
        for indicator, membership in outcome.indicators
    )
    return replace(outcome, indicators=indicators)


# -- outcomes.parquet ----------------------------------------------------------------------------

OUTCOME_SCHEMA = pa.schema(
    [
        ("patient", pa.string()),
        ("practice", pa.string()),
        ("cluster", pa.string()),
        ("guideline", pa.string()),
        ("version", pa.string()),
        ("content_hash", pa.string()),
        ("in_register", pa.bool_()),
        ("recommendations", pa.list_(pa.string())),
        (
            "indicators",
            pa.list_(pa.struct([("indicator", pa.string()), ("membership", pa.string())])),
        ),
        (
            "targets",
            pa.list_(
                pa.struct(
                    [
                        ("name", pa.string()),
                        ("value", pa.float64()),
                        ("source", pa.string()),
                        ("set_by", pa.string()),
                    ]
                )
            ),
        ),
        ("exceptions", pa.list_(pa.string())),
    ]
)


def outcome_order(o: PopulationOutcome) -> tuple[str, str, str]:
    """One order for every output, so a rerun writes the same bytes (DuckDB's row order is not
    stable across threads)."""
    return (o.practice or "", o.patient, o.guideline)


def outcomes_table(
    outcomes: Iterable[PopulationOutcome],
    clusters: Mapping[str, str],
    content_hashes: Mapping[tuple[str, str], str],
    reasons: ExceptionReasons,
) -> pa.Table:
    """A row per patient in a guideline's register, and per patient outside it with an
    exception recorded for the guideline: the engine's outcome, nested as lists.

    Why not every patient x guideline: outside the register an outcome is empty (no targets,
    recommendations or memberships), and such rows were 96 % of a national file and most of
    the time to write it. Nested rather than one column per indicator because guidelines have
    different indicators; ``UNNEST(indicators)`` gives the long patient/guideline/indicator/
    membership table.
    """
    rows = [
        {
            "patient": o.patient,
            "practice": o.practice,
            "cluster": clusters.get(o.practice) if o.practice is not None else None,
            "guideline": o.guideline,
            "version": o.version,
            "content_hash": content_hashes[(o.guideline, o.version)],
            "in_register": o.in_register,
            "recommendations": list(o.recommendations),
            "indicators": [{"indicator": i, "membership": m} for i, m in o.indicators],
            "targets": [
                {"name": n, "value": v, "source": s, "set_by": b} for n, v, s, b in o.targets
            ],
            "exceptions": list(reasons.get((o.patient, o.guideline), ())),
        }
        for o in sorted(outcomes, key=outcome_order)
        if o.in_register or (o.patient, o.guideline) in reasons
    ]
    return pa.Table.from_pylist(rows, schema=OUTCOME_SCHEMA)


# -- indicators ----------------------------------------------------------------------------------


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval for a proportion (95 % by default).

    Why Wilson: practice denominators are small and rates often near 0 or 1, where the normal
    approximation gives intervals outside [0, 1] or of zero width; Wilson's stays inside and is
    what NHS Digital's PHE tools and most quality registries use for proportions.
    """
    if trials <= 0:
        return None
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z / (1 + z2 / trials) * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True, slots=True)
class IndicatorRow:
    """One indicator for one unit (a practice, a cluster, everyone) on one reference date.

    ``denominator`` counts patients in the denominator after exceptions (numerator included);
    ``excepted`` those taken out by the rule's exceptions or by CDS feedback. ``None`` is a
    suppressed or undefined cell.
    """

    level: str
    id: str
    guideline: str
    version: str
    indicator: str
    title: str
    register: int | None
    numerator: int | None
    denominator: int | None
    excepted: int | None
    rate: float | None
    ci_low: float | None
    ci_high: float | None
    suppressed: bool


INDICATOR_COLUMNS = tuple(f.name for f in fields(IndicatorRow))


def units_of(practice: str | None, clusters: Mapping[str, str]) -> list[tuple[str, str]]:
    """The units a patient of ``practice`` counts in: all, the practice, its cluster."""
    units = [("all", ALL)]
    if practice is not None:
        units.append(("practice", practice))
        cluster = clusters.get(practice)
        if cluster is not None:
            units.append(("cluster", cluster))
    return units


def indicator_rows(
    outcomes: Iterable[PopulationOutcome],
    guidelines: Sequence[CompiledGuideline],
    clusters: Mapping[str, str],
    language: str,
) -> list[IndicatorRow]:
    """Unsuppressed counts, rates and Wilson intervals for every unit, guideline and indicator.

    Every unit that has patients gets a row for every indicator in force, zeros included: a
    practice with nobody in a register should see 0, not a missing line. Patients without a
    practice count only in ``all``; practices without a cluster in no cluster.
    """
    by_id = {g.id: g for g in guidelines}
    counts: dict[tuple[str, str, str, str], list[int]] = {}
    units: set[tuple[str, str]] = set()
    for o in outcomes:
        here = units_of(o.practice, clusters)
        units.update(here)
        if not o.in_register:
            continue
        memberships = dict(o.indicators)
        for indicator in by_id[o.guideline].indicators:
            membership = memberships.get(indicator.id, "outside")
            for level, unit in here:
                c = counts.setdefault((level, unit, o.guideline, indicator.id), [0, 0, 0, 0])
                c[0] += 1
                c[1] += membership == "numerator"
                c[2] += membership in IN_DENOMINATOR
                c[3] += membership == "excepted"
    return indicator_rows_from_counts(counts, units, guidelines, language)


def indicator_rows_from_counts(
    counts: Mapping[tuple[str, str, str, str], Sequence[int]],
    units: Iterable[tuple[str, str]],
    guidelines: Sequence[CompiledGuideline],
    language: str,
) -> list[IndicatorRow]:
    """The rows of :func:`indicator_rows` from counts already made (by SQL, in a big sweep):
    (level, unit, guideline, indicator) -> (register, numerator, denominator, excepted), and the
    (level, unit) pairs that have patients."""
    rows = []
    rank = {level: n for n, level in enumerate(LEVELS)}
    for level, unit in sorted(units, key=lambda u: (rank[u[0]], u[1])):
        for g in sorted(guidelines, key=lambda g: g.id):
            for indicator in g.indicators:
                register, numerator, denominator, excepted = counts.get(
                    (level, unit, g.id, indicator.id), (0, 0, 0, 0)
                )
                ci = wilson_interval(numerator, denominator)
                rows.append(
                    IndicatorRow(
                        level,
                        unit,
                        g.id,
                        g.version,
                        indicator.id,
                        indicator.title.in_language(language),
                        register,
                        numerator,
                        denominator,
                        excepted,
                        numerator / denominator if denominator else None,
                        ci[0] if ci else None,
                        ci[1] if ci else None,
                        False,
                    )
                )
    return rows


def small(numerator: int, denominator: int, below: int) -> bool:
    """Whether a rate rests on a small count: few patients with the property or few without."""
    return numerator < below or denominator - numerator < below


def suppress(row: IndicatorRow, below: int, hide: bool = False) -> IndicatorRow:
    """The row as it may leave the practice: small counts blanked.

    The rate and its counts go together: if the numerator or the rest of the denominator
    (denominator - numerator) is below ``below`` - zero included, since 0 % and 100 % tell
    something about every patient in the denominator - numerator, denominator, rate and interval
    are blanked and ``suppressed`` is set; ``hide`` does the same to a row that is not small
    itself but would give a small one away by subtraction (:func:`concealed`). The register and
    excepted counts are blanked on their own when below the threshold.
    """
    register = row.register if row.register is not None and row.register >= below else None
    excepted = row.excepted if row.excepted is not None and row.excepted >= below else None
    if not hide and not (
        row.numerator is not None and small(row.numerator, row.denominator or 0, below)
    ):
        return replace(row, register=register, excepted=excepted)
    return replace(
        row,
        register=register,
        numerator=None,
        denominator=None,
        excepted=excepted,
        rate=None,
        ci_low=None,
        ci_high=None,
        suppressed=True,
    )


Counts = tuple[int, int]  # numerator, denominator
Unit = tuple[str, str]  # level, id


def _sum(parts: Iterable[Counts]) -> Counts:
    numerator = denominator = 0
    for n, d in parts:
        numerator, denominator = numerator + n, denominator + d
    return numerator, denominator


def _exposed(total: Counts, insiders: Iterable[Counts], below: int) -> bool:
    """Whether hidden cells that sum to ``total`` give a small count away: the sum itself, or the
    sum less what one insider (a practice; a cluster's practices together) knows of its own. A
    group of nobody (denominator 0) tells nothing about a patient."""
    groups = [total, *((total[0] - n, total[1] - d) for n, d in insiders)]
    return any(d > 0 and small(n, d, below) for n, d in groups)


def _smallest(units: Iterable[Unit], counts: Mapping[Unit, Counts], default: Unit) -> Unit:
    return min(units, key=lambda u: (counts[u][1], u), default=default)


def concealed(counts: Mapping[Unit, Counts], below: int, clusters: Mapping[str, str]) -> set[Unit]:
    """The units of one indicator whose rate is hidden wherever practices see each other's
    (indicators-shared.csv; the cluster and country rows of indicators.csv): the small ones, and
    as many more as it takes that no small one can be worked out from those shown.

    Why: a cluster's counts are the sum of its practices', the country's the sum of the clusters',
    the practices without a cluster and the patients without a practice. One hidden practice of
    a cluster is the cluster's count less the other practices'; one hidden cluster the country's
    less the other clusters'; and a practice knows its own counts, so what is hidden must stay
    large without any one practice (or any one cluster's practices together) too.
    """
    hidden = {unit for unit, (n, d) in counts.items() if small(n, d, below)}
    members: dict[str | None, list[Unit]] = defaultdict(list)
    for level, unit in sorted(counts):
        if level == "practice":
            members[clusters.get(unit)].append((level, unit))
    for cluster, practices in members.items():
        if cluster is not None and ("cluster", cluster) in counts:
            _protect_cluster(("cluster", cluster), practices, counts, hidden, below)
    if ("all", ALL) in counts:
        _protect_country(members, counts, hidden, below)
    return hidden


def _protect_cluster(
    cluster: Unit,
    practices: list[Unit],
    counts: Mapping[Unit, Counts],
    hidden: set[Unit],
    below: int,
) -> None:
    """Hide the smallest shown practice while the hidden ones give a small count away, and the
    cluster when none is left."""
    while cluster not in hidden:
        unknown = [counts[p] for p in practices if p in hidden]
        if not _exposed(_sum(unknown), unknown, below):
            return
        hidden.add(_smallest((p for p in practices if p not in hidden), counts, cluster))


def _protect_country(
    members: Mapping[str | None, list[Unit]],
    counts: Mapping[Unit, Counts],
    hidden: set[Unit],
    below: int,
) -> None:
    """The same for the country: what it holds beyond the shown clusters and practices is the
    patients without a practice and the hidden practices outside a shown cluster. More is hidden
    with a shown practice outside a shown cluster, or a shown cluster that has hidden practices."""
    everyone = ("all", ALL)
    known = _sum(counts[u] for u in counts if u[0] == "practice")
    residue = (counts[everyone][0] - known[0], counts[everyone][1] - known[1])
    while everyone not in hidden:
        outside = [[p] for p in members.get(None, [])] + [
            m for c, m in members.items() if c is not None and ("cluster", c) in hidden
        ]
        unknown = [[counts[p] for p in group if p in hidden] for group in outside]
        insiders = [*(c for group in unknown for c in group), *map(_sum, unknown)]
        if not _exposed(_sum([residue, *(c for group in unknown for c in group)]), insiders, below):
            return
        candidates = [p for group in outside for p in group if p not in hidden] + [
            ("cluster", c)
            for c, m in members.items()
            if c is not None and ("cluster", c) not in hidden and any(p in hidden for p in m)
        ]
        hidden.add(_smallest(candidates, counts, everyone))


def for_sharing(
    rows: Iterable[IndicatorRow], below: int, clusters: Mapping[str, str]
) -> list[IndicatorRow]:
    """indicators-shared.csv: what may leave the practices (a cluster comparing its practices):
    every level suppressed, practice rows too, and what would give a small count away by
    subtraction (:func:`concealed`)."""
    rows = list(rows)
    by_indicator: dict[tuple[str, str], dict[Unit, Counts]] = defaultdict(dict)
    for r in rows:
        by_indicator[(r.guideline, r.indicator)][(r.level, r.id)] = (
            r.numerator or 0,
            r.denominator or 0,
        )
    hidden = {
        (key, unit)
        for key, counts in by_indicator.items()
        for unit in concealed(counts, below, clusters)
    }
    return [
        suppress(r, below, ((r.guideline, r.indicator), (r.level, r.id)) in hidden) for r in rows
    ]


def for_the_run(
    rows: Iterable[IndicatorRow], below: int, clusters: Mapping[str, str]
) -> list[IndicatorRow]:
    """indicators.csv: practice rows as the practice sees itself, the cluster and country rows
    as in :func:`for_sharing` (a practice that reads both files learns nothing more)."""
    rows = list(rows)
    shared = for_sharing(rows, below, clusters)
    return [r if r.level == "practice" else s for r, s in zip(rows, shared, strict=True)]


def indicator_row_from_csv(record: Mapping[str, str]) -> IndicatorRow:
    """Read back a row of indicators.csv (blank cells are suppressed or undefined)."""

    def number(name: str) -> int | None:
        return int(record[name]) if record[name] else None

    def ratio(name: str) -> float | None:
        return float(record[name]) if record[name] else None

    return IndicatorRow(
        record["level"],
        _restored(record["id"]),
        record["guideline"],
        record["version"],
        record["indicator"],
        _restored(record["title"]),
        number("register"),
        number("numerator"),
        number("denominator"),
        number("excepted"),
        ratio("rate"),
        ratio("ci_low"),
        ratio("ci_high"),
        record["suppressed"] == "true",
    )


# -- patient lists -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a patient is on a list, in words: the rendered card summary and the values behind it."""

    text: str
    key_values: str


@dataclass(frozen=True, slots=True)
class ListRow:
    patient: str
    guideline: str
    version: str
    guideline_title: str
    recommendation: str
    severity: str
    reason: str
    suggestion: str
    key_values: str
    exception: str  # override reason codes from CDS feedback, "|"-separated


LIST_COLUMNS = tuple(f.name for f in fields(ListRow))


def render_parts(parts: Sequence[str | tuple[object, ty.Type]], language: str) -> str:
    """A template with its values, rendered exactly as the per-patient engine renders a card."""
    return "".join(
        part if isinstance(part, str) else render(part[0], part[1], language) for part in parts
    )


def plain_summary(template: Template) -> str:
    """A summary without values, for when the values are unavailable: the literal words with the
    slots shown as an ellipsis."""
    return "".join(part if isinstance(part, str) else SLOT_UNAVAILABLE for part in template.parts)


def key_values_text(items: Iterable[tuple[str, str]]) -> str:
    """``name: value`` pairs for the list's key-values column."""
    return "; ".join(f"{name}: {value}" for name, value in items)


def list_rows(
    outcomes: Iterable[PopulationOutcome],
    guidelines: Sequence[CompiledGuideline],
    reasons: Mapping[tuple[str, str, str], Reason],
    exceptions: ExceptionReasons,
    language: str,
) -> dict[str, list[ListRow]]:
    """Each practice's patient list: one row per patient and recommendation that fired.

    Keyed by the patient's own practice and by nothing else, so a list can only ever hold that
    practice's patients; patients without a practice are on no list. Every practice with patients
    gets a list, possibly empty. A patient excepted by CDS feedback stays on the list, marked,
    because the GP decided about the patient, not about the data.
    """
    by_id = {g.id: g for g in guidelines}
    found: dict[str, list[tuple[tuple[str, int, str], ListRow]]] = {}
    for o in outcomes:
        if o.practice is None:
            continue
        rows = found.setdefault(o.practice, [])
        g = by_id[o.guideline]
        fired = set(o.recommendations)
        for number, rec in enumerate(g.recommendations):
            if rec.id not in fired:
                continue
            reason = reasons.get((o.patient, g.id, rec.id))
            row = ListRow(
                o.patient,
                g.id,
                g.version,
                g.title.in_language(language),
                rec.id,
                rec.indicator,
                reason.text if reason else plain_summary(rec.summary.in_language(language)),
                rec.suggestion.label.in_language(language) if rec.suggestion else "",
                reason.key_values if reason else "",
                "|".join(exceptions.get((o.patient, g.id), ())),
            )
            rows.append(((g.id, number, o.patient), row))
    return {
        practice: [row for _, row in sorted(rows, key=lambda r: r[0])]
        for practice, rows in sorted(found.items())
    }


# -- over time -----------------------------------------------------------------------------------

ListKey = tuple[str, str, str]  # practice, guideline, recommendation


def list_members(records: Iterable[Mapping[str, object]]) -> dict[ListKey, set[str]]:
    """Who is on which list, from outcome rows (as read back from outcomes.parquet)."""
    members: dict[ListKey, set[str]] = defaultdict(set)
    for r in records:
        practice = r["practice"]
        if practice is None:
            continue
        for rec in r["recommendations"] or ():  # type: ignore[union-attr]
            members[(str(practice), str(r["guideline"]), str(rec))].add(str(r["patient"]))
    return dict(members)


@dataclass(frozen=True, slots=True)
class ListChange:
    practice: str
    guideline: str
    recommendation: str
    patient: str
    change: str  # entered | left


@dataclass(frozen=True, slots=True)
class IndicatorChange:
    """An indicator's rate at both dates; ``rate_change`` only when both rates are shown."""

    level: str
    id: str
    guideline: str
    indicator: str
    previous: IndicatorRow | None
    current: IndicatorRow | None

    @property
    def rate_change(self) -> float | None:
        if self.previous is None or self.current is None:
            return None
        before, now = exact_rate(self.previous), exact_rate(self.current)
        if before is None or now is None:
            return None
        return now - before


def exact_rate(row: IndicatorRow) -> float | None:
    """numerator / denominator when both are shown, else the row's rate (None when suppressed).

    Why not ``row.rate``: a comparison reads its rows back from indicators.csv, whose rates are
    rounded to four decimals, and rounding that again to a tenth of a percent can land on the
    wrong side: 14/17 is 0.8235 in the file and 82.3 %, where 14/17 itself is 82.4 %.
    """
    if row.numerator is not None and row.denominator:
        return row.numerator / row.denominator
    return row.rate


@dataclass(frozen=True, slots=True)
class ComparisonReport:
    """What changed between two sweeps: the question a cluster asks after 3, 6 or 12 months."""

    previous: str  # reference date (or directory name) of the earlier sweep
    current: str
    lists: tuple[ListChange, ...]
    indicators: tuple[IndicatorChange, ...]
    # each run's suppression threshold, where its manifest says (None: not known)
    suppress_below: tuple[int | None, int | None] = (None, None)

    @property
    def new_versions(self) -> list[tuple[str, str, str]]:
        """(guideline, version before, version now) for each guideline in both runs whose
        version changed. Why: a rate or list that moves because the guideline changed is no
        change in the practice, and nothing else in the comparison says so."""
        versions: tuple[dict[str, set[str]], dict[str, set[str]]] = ({}, {})
        for i in self.indicators:
            for side, row in zip(versions, (i.previous, i.current), strict=True):
                if row is not None:
                    side.setdefault(i.guideline, set()).add(row.version)
        before, now = versions
        return [
            (g, ", ".join(sorted(before[g])), ", ".join(sorted(now[g])))
            for g in sorted(before.keys() & now.keys())
            if before[g] != now[g]
        ]

    @property
    def thresholds_differ(self) -> bool:
        """The runs hide counts below different thresholds: a cell shown in one run and hidden
        in the other is no change."""
        before, now = self.suppress_below
        return before is not None and now is not None and before != now


def compare_lists(
    previous: Mapping[ListKey, set[str]], current: Mapping[ListKey, set[str]]
) -> tuple[ListChange, ...]:
    """Patients who entered or left each practice's list for each recommendation."""
    changes = []
    for key in sorted(set(previous) | set(current)):
        before, after = previous.get(key, set()), current.get(key, set())
        for patient in sorted(after - before):
            changes.append(ListChange(*key, patient, "entered"))
        for patient in sorted(before - after):
            changes.append(ListChange(*key, patient, "left"))
    return tuple(
        sorted(changes, key=lambda c: (c.practice, c.guideline, c.recommendation, c.change))
    )


def compare_indicators(
    previous: Iterable[IndicatorRow], current: Iterable[IndicatorRow]
) -> tuple[IndicatorChange, ...]:
    """Each indicator row matched by level, unit, guideline and indicator (any version)."""

    def key(r: IndicatorRow) -> tuple[str, str, str, str]:
        return (r.level, r.id, r.guideline, r.indicator)

    before = {key(r): r for r in previous}
    after = {key(r): r for r in current}
    rank = {level: n for n, level in enumerate(LEVELS)}
    keys = sorted(set(before) | set(after), key=lambda k: (rank.get(k[0], 9), *k[1:]))
    return tuple(IndicatorChange(*k, before.get(k), after.get(k)) for k in keys)


COMPARISON_COLUMNS = (
    "kind",
    "level",
    "id",
    "guideline",
    "item",
    "patient",
    "change",
    "previous_numerator",
    "previous_denominator",
    "previous_rate",
    "current_numerator",
    "current_denominator",
    "current_rate",
    "rate_change",
    "suppressed",
)


def comparison_records(report: ComparisonReport) -> list[dict[str, object]]:
    """comparison.csv: list changes (kind=list, identifiable, practice level) then indicator
    movements (kind=indicator), in one long table a spreadsheet can filter."""
    records: list[dict[str, object]] = []
    for c in report.lists:
        records.append(
            {
                "kind": "list",
                "level": "practice",
                "id": c.practice,
                "guideline": c.guideline,
                "item": c.recommendation,
                "patient": c.patient,
                "change": c.change,
            }
        )
    for i in report.indicators:
        p, c = i.previous, i.current
        records.append(
            {
                "kind": "indicator",
                "level": i.level,
                "id": i.id,
                "guideline": i.guideline,
                "item": i.indicator,
                "change": "new" if p is None else "gone" if c is None else "",
                "previous_numerator": p.numerator if p else None,
                "previous_denominator": p.denominator if p else None,
                "previous_rate": p.rate if p else None,
                "current_numerator": c.numerator if c else None,
                "current_denominator": c.denominator if c else None,
                "current_rate": c.rate if c else None,
                "rate_change": i.rate_change,
                "suppressed": bool((p and p.suppressed) or (c and c.suppressed)),
            }
        )
    return records


COMPARISON_WORDS = {
    "da": {
        "title": "Sammenligning af kørsler",
        "practice": "Praksis",
        "cluster": "Klynge",
        "all": "Alle",
        "lists": "| vejledning | anbefaling | kom på listen | gik af listen |",
        "indicators": "| vejledning | indikator | før | nu | ændring |",
        "points": "procentpoint",
        "not computed": "(ikke beregnet)",
        "suppressed": "(skjult: for få)",
        "new versions": "Vejledninger i ny version mellem kørslerne (tal og lister kan flytte sig "
        "af den grund, ikke kun af praksis' arbejde):",
        "thresholds": "Kørslerne skjuler tal under forskellige grænser ({} og {}): et tal, der er "
        "skjult i den ene kørsel og vist i den anden, er ingen ændring.",
    },
    "en": {
        "title": "Sweep comparison",
        "practice": "Practice",
        "cluster": "Cluster",
        "all": "All",
        "lists": "| guideline | recommendation | entered | left |",
        "indicators": "| guideline | indicator | before | now | change |",
        "points": "points",
        "not computed": "(not computed)",
        "suppressed": "(suppressed)",
        "new versions": "Guidelines in a new version between the runs (their rates and lists may "
        "move because of it, not only because of the practices' work):",
        "thresholds": "The runs hide counts below different thresholds ({} and {}): a count "
        "hidden in one run and shown in the other is no change.",
    },
}
"""comparison.md's words: in the run's language, as its lists and indicator titles are."""


def _number(value: float, language: str, signed: bool = False) -> str:
    text = f"{value:+.1f}" if signed else f"{value:.1f}"
    return text.replace(".", ",") if language == "da" else text


def _percent(rate: float | None, language: str) -> str:
    return "-" if rate is None else f"{_number(100 * rate, language)} %"


def _fraction(row: IndicatorRow | None, language: str) -> str:
    words = COMPARISON_WORDS[language]
    if row is None:
        return words["not computed"]
    if row.suppressed:
        return words["suppressed"]
    return f"{row.numerator}/{row.denominator} = {_percent(exact_rate(row), language)}"


def comparison_markdown(report: ComparisonReport, language: str = "en") -> str:
    """comparison.md: counts only (no patient identifiers), per practice, cluster and overall."""
    words = COMPARISON_WORDS[language]
    lines = [f"# {words['title']}: {report.previous} → {report.current}", ""]
    if report.new_versions:
        lines += [words["new versions"], ""]
        lines += [f"- {g}: {before} → {now}" for g, before, now in report.new_versions]
        lines.append("")
    if report.thresholds_differ:
        lines += [words["thresholds"].format(*report.suppress_below), ""]
    moves: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for c in report.lists:
        moves[(c.practice, c.guideline, c.recommendation)][c.change == "left"] += 1
    units = sorted(
        {(i.level, i.id) for i in report.indicators}, key=lambda u: (LEVELS.index(u[0]), u[1])
    )
    for level, unit in units:
        lines += [f"## {words[level]}" + ("" if level == "all" else f" {unit}"), ""]
        if level == "practice":
            lines += [words["lists"], "|---|---|---:|---:|"]
            for (practice, guideline, rec), (entered, left) in sorted(moves.items()):
                if practice == unit:
                    lines.append(f"| {guideline} | {rec} | {entered} | {left} |")
            lines.append("")
        lines += [words["indicators"], "|---|---|---|---|---:|"]
        for i in report.indicators:
            if (i.level, i.id) != (level, unit):
                continue
            change = i.rate_change
            moved = (
                "-"
                if change is None
                else f"{_number(100 * change, language, signed=True)} {words['points']}"
            )
            shown = i.current or i.previous
            title = i.indicator
            if shown and shown.title:  # a title may hold the table's own separator
                title = f"{shown.title.replace('|', '/')} ({i.indicator})"
            lines.append(
                f"| {i.guideline} | {title} | {_fraction(i.previous, language)} | "
                f"{_fraction(i.current, language)} | {moved} |"
            )
        lines.append("")
    return "\n".join(lines)


# -- CSV -----------------------------------------------------------------------------------------


def cell(value: object) -> str:
    """Blank for None, four decimals for rates, lower-case booleans: stable across reruns; text
    made inert for spreadsheets (:func:`inert`)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4f}"
    return inert(str(value))


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def inert(text: str) -> str:
    """Text that a spreadsheet shows as text: one starting like a formula gets a ``'`` before it.

    Why: the lists and indicator files are opened in Excel, and their text comes from the data
    (patient ids, ydernumre, cluster names, CDS feedback reasons); ``=HYPERLINK(...)`` or
    ``=cmd|...`` in a patient id would run as a formula on the consultant's machine (OWASP's
    CSV injection). Numbers are written by :func:`cell` and never pass here."""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _restored(text: str) -> str:
    """:func:`inert` undone, for a file read back."""
    return text[1:] if text.startswith("'") and text[1:].startswith(_FORMULA_STARTS) else text


_QUOTED = re.compile(r'[,"\n]')  # the delimiter, the quote character, the line end


def csv_field(text: str) -> str:
    """``text`` as one field of a line that ``csv.writer`` (minimal quoting, LF line ends) would
    write.

    Why not the csv module: a national sweep writes millions of list rows, and its writer took
    10 microseconds a row (it looks at every character); most fields need no quotes. A field
    with a carriage return is left to the module, whose rule for it this does not repeat. A
    test checks this against ``csv.writer`` for arbitrary text; :func:`csv_text` stays on the
    module.
    """
    if "\r" in text:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(("", text))
        return buffer.getvalue()[1:-1]
    if _QUOTED.search(text) is None:
        return text
    return '"' + text.replace('"', '""') + '"'


def csv_text(columns: Sequence[str], records: Iterable[Mapping[str, object]]) -> str:
    """RFC 4180 CSV with a header and LF line ends."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for record in records:
        writer.writerow([cell(record.get(c)) for c in columns])
    return buffer.getvalue()


def as_record(row: IndicatorRow | ListRow) -> dict[str, object]:
    return {f.name: getattr(row, f.name) for f in fields(row)}
