"""What a guideline change would do to a population, before it is published.

Why: a changed threshold (an eGFR limit, a default HbA1c target) silently moves patients onto and
off every practice's list and moves every indicator. The guideline author and the quality unit
should see by how much, on the real population, before the new version reaches a GP. The diff
evaluates both guideline sets over the same store on the same date and compares the outcomes
with the same helpers the over-time comparison uses (:func:`~engine.population.outputs.compare_lists`,
:func:`~engine.population.outputs.compare_indicators`), so "entered" and "left" mean the same
thing here as between two sweeps.

Pure: outcomes and compiled guidelines in, an :class:`ImpactReport` and its text and JSON out;
:mod:`service.cli` runs the sweeps. The report is for the closed room (docs/sweeps.md): counts
are unsuppressed and patient ids appear in the per-practice sections, so it is for people who
may already read the store.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from engine.population.outcomes import PopulationOutcome
from engine.population.outputs import (
    LEVELS,
    IndicatorChange,
    IndicatorRow,
    ListChange,
    compare_indicators,
    compare_lists,
    indicator_rows,
    list_members,
    units_of,
)
from rules.tree import CompiledGuideline

Unit = tuple[str, str]  # (level, id): ("all", "all"), ("cluster", ...), ("practice", ...)


@dataclass(frozen=True, slots=True)
class GuidelineChange:
    """How a guideline id differs between the two sets (versions in force on the date).

    ``change`` is ``added``, ``removed``, ``new version``, ``changed`` (same version, other
    content: a rule edited without a version bump) or ``unchanged``.
    """

    guideline: str
    change: str
    old_version: str | None
    new_version: str | None


@dataclass(frozen=True, slots=True)
class RegisterChange:
    """Register size of a guideline in one unit, before and after."""

    level: str
    id: str
    guideline: str
    before: int
    after: int


@dataclass(frozen=True, slots=True)
class ImpactReport:
    """Everything the diff found; ``lists`` hold patient ids and are keyed by practice."""

    as_of: dt.date
    old: str  # how the old guideline set is named in the report (its directory)
    new: str
    guidelines: tuple[GuidelineChange, ...]
    lists: tuple[ListChange, ...]
    registers: tuple[RegisterChange, ...]
    indicators: tuple[IndicatorChange, ...]
    clusters: Mapping[str, str]  # practice -> cluster, to sum list movements per cluster

    @property
    def unchanged(self) -> bool:
        """True when no patient moves and no count changes: publishing changes nothing here."""
        return (
            not self.lists
            and all(r.before == r.after for r in self.registers)
            and not any(moved(i) for i in self.indicators)
        )


def guideline_changes(
    old: Sequence[CompiledGuideline], new: Sequence[CompiledGuideline]
) -> tuple[GuidelineChange, ...]:
    """Guidelines matched by id. The content hash catches an edit made without a version bump,
    which is exactly the change a reviewer most needs to see."""
    before = {g.id: g for g in old}
    after = {g.id: g for g in new}
    changes = []
    for gid in sorted(set(before) | set(after)):
        b, a = before.get(gid), after.get(gid)
        if b is None:
            change = "added"
        elif a is None:
            change = "removed"
        elif b.version != a.version:
            change = "new version"
        elif b.content_hash != a.content_hash:
            change = "changed"
        else:
            change = "unchanged"
        changes.append(
            GuidelineChange(gid, change, b.version if b else None, a.version if a else None)
        )
    return tuple(changes)


def _members(outcomes: Iterable[PopulationOutcome]) -> dict[tuple[str, str, str], set[str]]:
    return list_members(
        {
            "patient": o.patient,
            "practice": o.practice,
            "guideline": o.guideline,
            "recommendations": o.recommendations,
        }
        for o in outcomes
    )


def _registers(
    outcomes: Iterable[PopulationOutcome], clusters: Mapping[str, str]
) -> dict[tuple[str, str, str], int]:
    counts: dict[tuple[str, str, str], int] = defaultdict(int)
    for o in outcomes:
        for level, unit in units_of(o.practice, clusters):
            counts[(level, unit, o.guideline)] += o.in_register
    return counts


def _rank(level: str) -> int:
    return LEVELS.index(level) if level in LEVELS else len(LEVELS)


def impact(
    old_outcomes: Iterable[PopulationOutcome],
    new_outcomes: Iterable[PopulationOutcome],
    old_guidelines: Sequence[CompiledGuideline],
    new_guidelines: Sequence[CompiledGuideline],
    as_of: dt.date,
    clusters: Mapping[str, str] | None = None,
    *,
    old_name: str = "old",
    new_name: str = "new",
    language: str = "en",
) -> ImpactReport:
    """Compare two sweeps of the same store on the same date, one per guideline set.

    ``*_guidelines`` are the versions in force on ``as_of`` (those the sweep evaluated).
    Exceptions from CDS feedback are not applied: both sides are the rules alone, so every
    difference is the rule change's.
    """
    clusters = clusters or {}
    before, after = list(old_outcomes), list(new_outcomes)
    registers_before, registers_after = _registers(before, clusters), _registers(after, clusters)
    keys = sorted(
        set(registers_before) | set(registers_after), key=lambda k: (_rank(k[0]), k[1], k[2])
    )
    registers = tuple(
        RegisterChange(*k, registers_before.get(k, 0), registers_after.get(k, 0)) for k in keys
    )
    return ImpactReport(
        as_of,
        old_name,
        new_name,
        guideline_changes(old_guidelines, new_guidelines),
        compare_lists(_members(before), _members(after)),
        registers,
        compare_indicators(
            indicator_rows(before, old_guidelines, clusters, language),
            indicator_rows(after, new_guidelines, clusters, language),
        ),
        dict(clusters),
    )


def moved(change: IndicatorChange) -> bool:
    """An indicator moved if its numerator or denominator did, or it appeared or went."""
    p, c = change.previous, change.current
    if p is None or c is None:
        return True
    return (p.numerator, p.denominator) != (c.numerator, c.denominator)


# -- the report, per unit ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ListMove:
    guideline: str
    recommendation: str
    entered: tuple[str, ...]
    left: tuple[str, ...]


def _list_moves(report: ImpactReport) -> dict[Unit, list[_ListMove]]:
    """Movements per unit: a practice's own patients, and the same summed for its cluster and
    for everyone (where only the counts are shown)."""
    found: dict[tuple[str, str, str, str], tuple[list[str], list[str]]] = {}
    for c in report.lists:
        for level, unit in units_of(c.practice, report.clusters):
            entered, left = found.setdefault((level, unit, c.guideline, c.recommendation), ([], []))
            (entered if c.change == "entered" else left).append(c.patient)
    moves: dict[Unit, list[_ListMove]] = defaultdict(list)
    for (level, unit, guideline, rec), (entered, left) in sorted(found.items()):
        moves[(level, unit)].append(_ListMove(guideline, rec, tuple(entered), tuple(left)))
    return moves


def _units_in(report: ImpactReport) -> list[Unit]:
    units = {(r.level, r.id) for r in report.registers}
    units |= {(i.level, i.id) for i in report.indicators}
    return sorted(units, key=lambda u: (-_rank(u[0]), u[1]))  # everyone first, practices last


def _percent(row: IndicatorRow | None) -> str:
    if row is None:
        return "(not computed)"
    return "-" if row.rate is None else f"{100 * row.rate:.0f} %"


def _counts(change: IndicatorChange) -> str:
    p, c = change.previous, change.current
    if p is None or c is None:
        return "(guideline added or removed)"
    if p.denominator == c.denominator:
        return f"(numerator {p.numerator} -> {c.numerator} of {c.denominator})"
    return f"(numerator {p.numerator} of {p.denominator} -> {c.numerator} of {c.denominator})"


def impact_text(report: ImpactReport) -> str:
    """The readable report: what changed in the rules, then per unit and guideline only what
    moves. Patient ids are listed under practices only; cluster and overall give counts."""
    moves = _list_moves(report)
    lines = [f"Impact of {report.new} against {report.old} on {report.as_of.isoformat()}", ""]
    changed = [g for g in report.guidelines if g.change != "unchanged"]
    lines.append(
        f"Guidelines: {len(report.guidelines)} in force, {len(changed)} differ"
        + (":" if changed else ".")
    )
    for g in changed:
        versions = " -> ".join(dict.fromkeys(v for v in (g.old_version, g.new_version) if v))
        note = " (same version, other content)" if g.change == "changed" else ""
        lines.append(f"  {g.guideline} {versions}: {g.change}{note}")
    lines.append("")
    if report.unchanged:
        lines.append("No patient enters or leaves a list; no register or indicator changes.")
        return "\n".join(lines) + "\n"
    for level, unit in _units_in(report):
        section: list[str] = []
        guidelines = sorted(
            {r.guideline for r in report.registers if (r.level, r.id) == (level, unit)}
            | {i.guideline for i in report.indicators if (i.level, i.id) == (level, unit)}
        )
        for gid in guidelines:
            body: list[str] = []
            for r in report.registers:
                if (r.level, r.id, r.guideline) == (level, unit, gid) and r.before != r.after:
                    body.append(f"  register: {r.before} -> {r.after} patients")
            for m in moves.get((level, unit), []):
                if m.guideline != gid:
                    continue
                line = f"  +{len(m.entered)} / -{len(m.left)} patients on {m.recommendation}"
                if level == "practice":
                    who = [f"entered {', '.join(m.entered)}"] if m.entered else []
                    who += [f"left {', '.join(m.left)}"] if m.left else []
                    line += f" ({'; '.join(who)})"
                body.append(line)
            for i in report.indicators:
                if (i.level, i.id, i.guideline) == (level, unit, gid) and moved(i):
                    body.append(
                        f"  indicator {i.indicator}: {_percent(i.previous)} -> "
                        f"{_percent(i.current)} {_counts(i)}"
                    )
            if body:
                section += [gid, *body]
        if section:
            title = "All patients" if level == "all" else f"{level.capitalize()} {unit}"
            lines += [f"== {title}", *section, ""]
    return "\n".join(lines)


def _row_json(row: IndicatorRow | None) -> dict[str, object] | None:
    if row is None:
        return None
    return {
        "version": row.version,
        "register": row.register,
        "numerator": row.numerator,
        "denominator": row.denominator,
        "excepted": row.excepted,
        "rate": row.rate,
        "ci_low": row.ci_low,
        "ci_high": row.ci_high,
    }


def impact_json(report: ImpactReport) -> dict[str, object]:
    """The report as JSON: every unit with what moves in it (patient ids in practices only)."""
    moves = _list_moves(report)
    units = []
    for level, unit in _units_in(report):
        lists = []
        for m in moves.get((level, unit), []):
            entry: dict[str, object] = {
                "guideline": m.guideline,
                "recommendation": m.recommendation,
                "entered": len(m.entered),
                "left": len(m.left),
            }
            if level == "practice":
                entry["patients_entered"] = list(m.entered)
                entry["patients_left"] = list(m.left)
            lists.append(entry)
        units.append(
            {
                "level": level,
                "id": unit,
                "registers": [
                    {"guideline": r.guideline, "before": r.before, "after": r.after}
                    for r in report.registers
                    if (r.level, r.id) == (level, unit)
                ],
                "lists": lists,
                "indicators": [
                    {
                        "guideline": i.guideline,
                        "indicator": i.indicator,
                        "moved": moved(i),
                        "before": _row_json(i.previous),
                        "after": _row_json(i.current),
                        "rate_change": i.rate_change,
                    }
                    for i in report.indicators
                    if (i.level, i.id) == (level, unit)
                ],
            }
        )
    return {
        "as_of": report.as_of.isoformat(),
        "old": report.old,
        "new": report.new,
        "unchanged": report.unchanged,
        "guidelines": [
            {
                "guideline": g.guideline,
                "change": g.change,
                "old_version": g.old_version,
                "new_version": g.new_version,
            }
            for g in report.guidelines
        ],
        "units": units,
    }
