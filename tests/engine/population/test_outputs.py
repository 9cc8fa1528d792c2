"""The pure parts of the sweep outputs, on hand-computed and hand-built cases (no sweep)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import subprocess
import sys
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from engine.population import outputs as out
from engine.population.outcomes import PopulationOutcome
from engine.population.run import compare, write_comparison, write_outputs
from rules.guideline_set import GuidelineSet
from service.feedback import PatientException
from tests.engine.population.synthetic import LIBRARY

# -- Wilson score interval -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [  # Newcombe (1998), Stat Med 17:857-872, Table I, method 3 (score interval, no correction)
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_interval_matches_the_published_examples(
    successes: int, trials: int, low: float, high: float
) -> None:
    got = out.wilson_interval(successes, trials)
    assert got is not None
    assert got == pytest.approx((low, high), abs=5e-5)


def test_wilson_interval_by_hand() -> None:
    """8 of 10, z = 1.96: centre (0.8 + 0.1921) / 1.3842 = 0.7167, half-width
    1.96 / 1.3842 * sqrt(0.016 + 0.0096) = 0.2265 -> 0.4902 to 0.9433."""
    low, high = out.wilson_interval(8, 10)  # type: ignore[misc]
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert out.wilson_interval(0, 0) is None
    assert out.wilson_interval(5, 5) == pytest.approx((0.5655, 1.0), abs=5e-5)


# -- suppression ---------------------------------------------------------------------------------


def row(
    level: str, numerator: int, denominator: int, register: int = 100, excepted: int = 0
) -> out.IndicatorRow:
    ci = out.wilson_interval(numerator, denominator)
    return out.IndicatorRow(
        level,
        "x",
        "g",
        "1",
        "i",
        "title",
        register,
        numerator,
        denominator,
        excepted,
        numerator / denominator if denominator else None,
        ci[0] if ci else None,
        ci[1] if ci else None,
        False,
    )


@pytest.mark.parametrize(
    ("numerator", "denominator", "suppressed"),
    [
        (4, 100, True),  # small numerator
        (96, 100, True),  # small complement: 4 patients without the property
        (0, 100, True),  # 0 % says something about all 100
        (100, 100, True),  # and so does 100 %
        (3, 4, True),  # small denominator
        (5, 10, False),
        (20, 25, False),
    ],
)
def test_a_rate_is_suppressed_when_it_rests_on_a_small_count(
    numerator: int, denominator: int, suppressed: bool
) -> None:
    got = out.suppress(row("cluster", numerator, denominator), 5)
    assert got.suppressed is suppressed
    if suppressed:
        assert (got.numerator, got.denominator, got.rate, got.ci_low, got.ci_high) == (None,) * 5
    else:
        assert (got.numerator, got.denominator) == (numerator, denominator)


def test_register_and_excepted_counts_are_blanked_on_their_own() -> None:
    got = out.suppress(row("all", 10, 20, register=3, excepted=2), 5)
    assert not got.suppressed
    assert (got.register, got.excepted) == (None, None)
    assert out.suppress(row("all", 10, 20, register=30, excepted=7), 5).excepted == 7


def test_practice_rows_are_kept_for_the_practice_and_suppressed_for_sharing() -> None:
    rows = [row("practice", 1, 2), row("cluster", 1, 2), row("all", 1, 2)]
    clusters = {"x": "x"}
    assert [r.suppressed for r in out.for_the_run(rows, 5, clusters)] == [False, True, True]
    assert [r.suppressed for r in out.for_sharing(rows, 5, clusters)] == [True, True, True]


def unit(level: str, unit_id: str, numerator: int, denominator: int) -> out.IndicatorRow:
    return replace(row(level, numerator, denominator), id=unit_id)


def hidden(rows: list[out.IndicatorRow]) -> set[str]:
    return {r.id for r in rows if r.suppressed}


def test_a_hidden_cluster_is_not_the_country_less_the_other_clusters() -> None:
    """k1 (2 of 40) is small; with the country and k2 shown, all - k2 gave it back. k2 cannot
    hide it (its practices are shown, their sum is k2), so the country is hidden."""
    rows = [
        unit("practice", "p1", 2, 40),
        unit("practice", "p2", 15, 30),
        unit("practice", "p3", 15, 30),
        unit("cluster", "k1", 2, 40),
        unit("cluster", "k2", 30, 60),
        unit("all", "all", 32, 100),
    ]
    clusters = {"p1": "k1", "p2": "k2", "p3": "k2"}
    assert hidden(out.for_sharing(rows, 5, clusters)) == {"p1", "k1", "all"}
    assert hidden(out.for_the_run(rows, 5, clusters)) == {"k1", "all"}


def test_a_hidden_practice_is_not_its_cluster_less_the_other_practices() -> None:
    """p1 (2 of 20) is small; k1 less p2 and p3 gave it back, and so would k1 less p2 to p3
    (who knows its own counts) if only p1 and p2 were hidden: all three are."""
    rows = [
        unit("practice", "p1", 2, 20),
        unit("practice", "p2", 20, 40),
        unit("practice", "p3", 20, 45),
        unit("cluster", "k1", 42, 105),
    ]
    clusters = {"p1": "k1", "p2": "k1", "p3": "k1"}
    assert hidden(out.for_sharing(rows, 5, clusters)) == {"p1", "p2", "p3"}


def test_a_cluster_is_hidden_when_it_less_one_practice_is_another_small_practice() -> None:
    """A practice reads its own row (indicators.csv) and the cluster's: k1 less p2 is p1."""
    rows = [
        unit("practice", "p1", 2, 20),
        unit("practice", "p2", 20, 40),
        unit("cluster", "k1", 22, 60),
    ]
    clusters = {"p1": "k1", "p2": "k1"}
    assert hidden(out.for_the_run(rows, 5, clusters)) == {"k1"}
    assert hidden(out.for_sharing(rows, 5, clusters)) == {"p1", "p2", "k1"}


def test_the_country_less_its_clusters_does_not_give_away_patients_without_a_practice() -> None:
    """3 of 10 patients without a practice count only in the country's row."""
    rows = [
        unit("practice", "p1", 15, 50),
        unit("practice", "p2", 15, 50),
        unit("cluster", "k1", 30, 100),
        unit("all", "all", 33, 110),
    ]
    clusters = {"p1": "k1", "p2": "k1"}
    assert hidden(out.for_sharing(rows, 5, clusters)) == {"all"}


def test_nothing_more_is_hidden_when_the_hidden_cells_stay_large_together() -> None:
    """p1 and p2 are small each but 10 of 20 together, and large without either: k1 is shown."""
    rows = [
        unit("practice", "p1", 4, 8),
        unit("practice", "p2", 3, 6),
        unit("practice", "p3", 3, 6),
        unit("practice", "p4", 20, 40),
        unit("cluster", "k1", 30, 60),
        unit("all", "all", 30, 60),
    ]
    clusters = dict.fromkeys(("p1", "p2", "p3", "p4"), "k1")
    assert hidden(out.for_sharing(rows, 5, clusters)) == {"p1", "p2", "p3"}


def _determined(known: list[list[Fraction]], target: list[Fraction]) -> bool:
    """Whether ``target`` is a linear combination of the ``known`` rows (Gaussian elimination)."""

    def rank(rows: list[list[Fraction]]) -> int:
        rows, found = [r[:] for r in rows], 0
        for column in range(len(target)):
            pivot = next((r for r in rows[found:] if r[column]), None)
            if pivot is None:
                continue
            rows.remove(pivot)
            rows = [
                [a - r[column] / pivot[column] * b for a, b in zip(r, pivot, strict=True)]
                for r in rows
            ]
            rows.insert(found, pivot)
            found += 1
        return found

    return rank([*known, target]) == rank(known)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["k1", "k2", "k3", None]), st.integers(0, 12), st.integers(0, 12)
        ),
        min_size=1,
        max_size=6,
    ),
    st.tuples(st.integers(0, 3), st.integers(0, 3)),
)
def test_no_small_count_can_be_worked_out_from_the_shown_rows_and_ones_own(
    practices: list[tuple[str | None, int, int]], nobody: tuple[int, int]
) -> None:
    """Every row a sum of practices (and of the patients without one); a reader knows the shown
    rows of indicators-shared.csv and one practice's own. No small practice or cluster it does not
    own may be a linear combination of what it knows."""
    names = [f"p{n}" for n in range(len(practices))]
    clusters = {p: c for p, (c, _, _) in zip(names, practices, strict=True) if c is not None}
    counts = {
        ("practice", p): (n, n + rest) for p, (_, n, rest) in zip(names, practices, strict=True)
    }
    for cluster in set(clusters.values()):
        inside = [counts[("practice", p)] for p in names if clusters.get(p) == cluster]
        counts[("cluster", cluster)] = (sum(n for n, _ in inside), sum(d for _, d in inside))
    total = [counts[("practice", p)] for p in names] + [(nobody[0], sum(nobody))]
    counts[("all", "all")] = (sum(n for n, _ in total), sum(d for _, d in total))
    rows = [unit(level, u, n, d) for (level, u), (n, d) in counts.items()]

    def leaves(level: str, u: str) -> list[Fraction]:  # nobody without a practice: known to be 0
        inside = [level == "all" or p == u or clusters.get(p) == u for p in names]
        return [Fraction(x) for x in [*inside, level == "all" and sum(nobody) > 0]]

    published = out.for_sharing(rows, 5, clusters)
    shown = [leaves(r.level, r.id) for r in published if not r.suppressed]
    for reader in names:
        known = [*shown, leaves("practice", reader)]
        for r in published:
            n, d = counts[(r.level, r.id)]
            own = leaves(r.level, r.id) == leaves("practice", reader)
            if r.suppressed and d and out.small(n, d, 5) and not own:
                assert not _determined(known, leaves(r.level, r.id)), (reader, r.level, r.id)


# -- exceptions ----------------------------------------------------------------------------------


# the library's version of t2d-hba1c: write_outputs looks the outcomes' guideline up by it
VERSION = yaml.safe_load((LIBRARY / "t2d-hba1c.yaml").read_text(encoding="utf-8"))["version"]


def outcome(
    patient: str,
    practice: str | None,
    recommendations: tuple[str, ...] = (),
    above_58: str = "outside",
    in_register: bool = True,
) -> PopulationOutcome:
    indicators = (("hba1c-above-58", above_58), ("ddd-1f1-hba1c-below-59", "outside"))
    return PopulationOutcome(
        patient,
        practice,
        "t2d-hba1c",
        VERSION,
        in_register,
        recommendations,
        indicators if in_register else (),
        (),
    )


def test_exceptions_take_patients_out_of_denominators_only() -> None:
    at = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    reasons = out.exceptions_in_force(
        [
            PatientException("p1", "t2d-hba1c", "hba1c-above-target", "declined", at, "a"),
            PatientException("p1", "t2d-hba1c", None, "not-suitable", at, "b"),
            PatientException("p2", "t2d-hba1c", None, "declined", at.replace(month=5), "c"),
        ],
        dt.date(2026, 4, 1),
    )
    assert reasons == {("p1", "t2d-hba1c"): ("declined", "not-suitable")}
    excepted = out.apply_exceptions(outcome("p1", "A", ("r",), "numerator"), reasons)
    assert excepted.in_register and excepted.recommendations == ("r",)
    assert dict(excepted.indicators) == {
        "hba1c-above-58": "excepted",
        "ddd-1f1-hba1c-below-59": "outside",
    }
    untouched = outcome("p2", "A", (), "denominator")
    assert out.apply_exceptions(untouched, reasons) is untouched


# -- over time, on a hand-built case -------------------------------------------------------------

A, B = "100001", "100002"
ABOVE, MISSING = "hba1c-above-target", "hba1c-missing"


def test_comparison_reports_who_entered_and_left_each_list(
    library: GuidelineSet, tmp_path: Path
) -> None:
    before = [
        outcome("p1", A, (ABOVE,), "numerator"),
        outcome("p2", A, (ABOVE,), "numerator"),
        outcome("p3", A, (), "denominator"),
        outcome("p6", A, (), "denominator"),
        outcome("p5", B, (MISSING,)),
        outcome("p9", None, (ABOVE,), "numerator"),  # no practice: on no list
    ]
    after = [
        outcome("p1", A, (), "denominator"),  # improved: leaves
        outcome("p2", A, (ABOVE,), "numerator"),  # stays
        outcome("p3", A, (ABOVE,), "numerator"),  # enters
        outcome("p4", A, (MISSING,)),  # new patient: enters
        outcome("p6", A, (ABOVE,), "numerator"),  # enters
        outcome("p5", B, (), "denominator"),  # measured: leaves
        outcome("p9", None, (), "denominator"),
    ]
    for day, outcomes in (("2026-01-01", before), ("2026-04-01", after)):
        write_outputs(
            tmp_path / day,
            library,
            dt.date.fromisoformat(day),
            outcomes,
            {},
            {A: "k1", B: "k1"},
            5,
            [],
            "en",
        )
    report = compare(tmp_path / "2026-01-01", tmp_path / "2026-04-01")
    assert (report.previous, report.current) == ("2026-01-01", "2026-04-01")
    assert [(c.practice, c.recommendation, c.patient, c.change) for c in report.lists] == [
        (A, ABOVE, "p3", "entered"),
        (A, ABOVE, "p6", "entered"),
        (A, ABOVE, "p1", "left"),
        (A, MISSING, "p4", "entered"),
        (B, MISSING, "p5", "left"),
    ]
    moved = {
        (i.level, i.id): i
        for i in report.indicators
        if i.guideline == "t2d-hba1c" and i.indicator == "hba1c-above-58"
    }
    assert moved[("practice", A)].previous.rate == pytest.approx(2 / 4)
    assert moved[("practice", A)].current.rate == pytest.approx(3 / 4)
    assert moved[("practice", A)].rate_change == pytest.approx(1 / 4)
    assert moved[("practice", B)].previous.rate is None  # 0 of 0: no rate, no change
    assert moved[("practice", B)].rate_change is None
    assert moved[("cluster", "k1")].current.suppressed  # 3 of 5: too few to show
    assert moved[("cluster", "k1")].rate_change is None

    written = write_comparison(report, tmp_path / "comparison")
    assert (tmp_path / "comparison" / "comparison.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    with (tmp_path / "comparison" / "comparison.csv").open(encoding="utf-8-sig", newline="") as f:
        records = list(csv.DictReader(f))
    assert written["comparison.csv"] == len(records)
    lists = [r for r in records if r["kind"] == "list"]
    assert [(r["patient"], r["change"]) for r in lists] == [
        ("p3", "entered"),
        ("p6", "entered"),
        ("p1", "left"),
        ("p4", "entered"),
        ("p5", "left"),
    ]
    a = next(
        r
        for r in records
        if r["kind"] == "indicator"
        and (r["id"], r["guideline"], r["item"]) == (A, "t2d-hba1c", "hba1c-above-58")
    )
    assert (a["previous_numerator"], a["current_numerator"], a["rate_change"]) == (
        "2",
        "3",
        "0.2500",
    )
    markdown = (tmp_path / "comparison" / "comparison.md").read_text(encoding="utf-8")
    assert f"## Practice {A}" in markdown
    assert f"| t2d-hba1c | {ABOVE} | 2 | 1 |" in markdown
    assert "+25.0 points" in markdown
    assert "p3" not in markdown, "the summary carries counts, not patients"


@pytest.mark.parametrize(
    ("before", "now", "shown"),
    [
        ((14, 17), (63, 68), "| 14/17 = 82.4 % | 63/68 = 92.6 % | +10.3 points |"),
        ((0, 0), (63, 68), "| 0/0 = - | 63/68 = 92.6 % | - |"),
    ],
)
def test_comparison_percentages_come_from_the_counts_not_the_rounded_rate(
    before: tuple[int, int], now: tuple[int, int], shown: str
) -> None:
    """indicators.csv rounds rates to four decimals (14/17 is 0.8235); rounding that again gave
    82.3 % and 92.7 % beside the fractions they stand for."""

    def read_back(numerator: int, denominator: int) -> out.IndicatorRow:
        written = row("practice", numerator, denominator)
        text = out.csv_text(out.INDICATOR_COLUMNS, [out.as_record(written)])
        (record,) = csv.DictReader(io.StringIO(text))
        return out.indicator_row_from_csv(record)

    changes = out.compare_indicators([read_back(*before)], [read_back(*now)])
    markdown = out.comparison_markdown(
        out.ComparisonReport("2026-01-01", "2026-04-01", (), changes)
    )
    assert shown in markdown, markdown


def test_comparison_markdown_is_in_the_runs_language_with_indicator_titles() -> None:
    """It was English and ids only, whatever the run's language."""
    before, now = row("cluster", 14, 17), row("cluster", 63, 68)
    changes = out.compare_indicators([before], [now])
    report = out.ComparisonReport("2026-01-01", "2026-04-01", (), changes)
    danish = out.comparison_markdown(report, "da")
    assert danish.startswith("# Sammenligning af kørsler: 2026-01-01 → 2026-04-01")
    assert "| vejledning | indikator | før | nu | ændring |" in danish
    assert f"| {before.title} ({before.indicator}) | 14/17 = 82,4 % | 63/68 = 92,6 % |" in danish
    assert "| +10,3 procentpoint |" in danish
    assert "+10.3 points" in out.comparison_markdown(report, "en")


def test_outputs_do_not_depend_on_the_process(tmp_path: Path) -> None:
    """A restarted run is a new process with a new hash seed: set and dict order must never
    reach a file."""
    written = []
    for seed in ("1", "2"):
        directory = tmp_path / seed
        subprocess.run(
            [sys.executable, "-m", "tests.engine.population.hand_built", str(directory)],
            check=True,
            cwd=Path(__file__).resolve().parents[3],
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        written.append(
            {
                str(p.relative_to(directory)): p.read_bytes()
                for p in sorted(directory.rglob("*"))
                if p.is_file()
            }
        )
    assert len(written[0]) > 40
    assert written[0] == written[1]


@given(st.lists(st.text(), min_size=2, max_size=6))
def test_csv_field_writes_what_the_csv_module_writes(cells: list[str]) -> None:
    """The lists' fast CSV path (:func:`outputs.csv_field`) against ``csv.writer``."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    assert ",".join(out.csv_field(c) for c in cells) + "\n" == buffer.getvalue()
