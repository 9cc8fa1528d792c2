"""Guidelines compiled to set-based SQL as sqlglot syntax trees, one tree for every SQL engine.

The per-patient engine (:mod:`engine.patient`) is the reference; every construct here mirrors
:mod:`engine.primitives` and :mod:`engine.expressions` so both engines agree patient by patient:
inclusive windows, latest by (date, resource), SQL's own three-valued logic, bounds such as eGFR
'>90' compared as intervals, one target per measure across guidelines by precedence. Trees are
rendered per dialect (DuckDB, Spark) by sqlglot; no SQL text is written or transpiled.

A sweep runs in three steps per reference date: ``base`` (a row per patient in the register, with
its facts and the guideline's own targets; outside a register the outcome is empty), ``winners``
(the target per patient and measure), ``outcomes`` (recommendations and indicators with the
shared targets).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import sqlglot.expressions as exp

from engine.primitives import PRESENT_STATUSES, TAKEN_STATUSES, window_start
from rules import tree as t
from rules import types as ty
from rules.expressions import references
from rules.guideline_set import GuidelineSet

TRUE, FALSE, NULL = exp.true(), exp.false(), exp.null()
INF = exp.cast(exp.Literal.string("inf"), "DOUBLE")


def lit(value: object) -> exp.Expression:
    if value is None:
        return NULL
    if isinstance(value, bool):
        return TRUE if value else FALSE
    if isinstance(value, int | float):
        return exp.Literal.number(repr(float(value)))
    if isinstance(value, dt.date):
        return exp.cast(exp.Literal.string(value.isoformat()), "DATE")
    return exp.Literal.string(str(value))


def col(name: str, table: str | None = None) -> exp.Column:
    return exp.column(name, table=table)


def is_true(condition: exp.Expression) -> exp.Expression:
    """SQL's unknown counts as false where a decision is made, as in the per-patient engine."""
    return exp.func("COALESCE", exp.paren(condition), FALSE)


def arith(kind: type[exp.Binary], left: exp.Expression, right: exp.Expression) -> exp.Expression:
    """Binary arithmetic with both operands in parentheses: sqlglot renders trees as built."""
    return exp.paren(kind(this=exp.paren(left), expression=exp.paren(right)))


def in_list(expr: exp.Expression, values: frozenset[str]) -> exp.Expression:
    return exp.In(this=expr, expressions=[lit(v) for v in sorted(values)])


_OBSERVATION_FIELDS = ("value", "comparator", "date", "resource")


def _struct(*columns: exp.Column, names: tuple[str, ...] | None = None) -> exp.Struct:
    """A struct of columns, named after them (or ``names``), rendered per dialect."""
    return exp.Struct(
        expressions=[
            exp.PropertyEQ(this=exp.to_identifier(name), expression=c)
            for c, name in zip(columns, names or [c.name for c in columns], strict=True)
        ]
    )


def _unpack(rows: exp.Select, picked: exp.Expression, fields: tuple[str, ...]) -> exp.Select:
    """``patient`` and the fields of the one row per patient that ``picked`` (an ARG_MAX or
    ARG_MIN of a struct of ``fields``) chooses among ``rows``.

    Why not ROW_NUMBER() ... = 1: a window sorts every row of every patient; the aggregate keeps one
    candidate per patient and is several times faster on DuckDB. The struct never is NULL, so a
    NULL value is picked as such (ARG_MAX skips NULL arguments)."""
    per_patient = (
        exp.select(col("patient"), exp.alias_(picked, "picked"))
        .from_(exp.alias_(exp.paren(rows), "b"), copy=False)
        .group_by(col("patient"), copy=False)
    )
    return exp.select(
        col("patient"),
        *(
            exp.alias_(exp.Dot(this=col("picked"), expression=exp.to_identifier(f)), f)
            for f in fields
        ),
    ).from_(exp.alias_(exp.paren(per_patient), "n"), copy=False)


@dataclass(frozen=True, slots=True)
class Value:
    """A compiled expression; ``cmp`` is the comparator column when the value may be a bound."""

    v: exp.Expression
    cmp: exp.Expression | None = None


def table_name(index: int, part: str) -> str:
    return f"g{index}_{part}"


class GuidelineSql:
    """SQL for one guideline at one reference date."""

    def __init__(self, index: int, guideline: t.CompiledGuideline, as_of: dt.date) -> None:
        self.index = index
        self.g = guideline
        self.as_of = as_of
        self.facts = {f.name: f for f in guideline.facts}
        self.targets = {target.name: target for target in guideline.targets}
        self.derived_bounds: dict[str, bool] = {}  # derived values that may carry a comparator
        for fact in guideline.facts:
            if isinstance(fact.primitive, t.Derived):
                value = _Expressions(self, own=True).compile(fact.primitive.expr)
                self.derived_bounds[fact.name] = value.cmp is not None

    # -- step 1: facts, register, own targets ----------------------------------------------------

    def base(self) -> exp.Select:
        """One row per patient in the register: its facts, derived facts and own targets.

        Why the register first: a register is a few per cent of the population. Only the facts
        the register reads are joined for every patient; the other facts are joined for the
        register's patients, and only their rows are stored (with every patient's row, these
        tables were half of a national sweep's SQL time). Patients outside the register have
        an empty outcome, as in the per-patient engine."""
        ctes: list[tuple[str, exp.Expression]] = []
        reads = self._register_reads()
        first = [f for f in self.g.facts if f.name in reads]
        rest = [f for f in self.g.facts if f.name not in reads]
        patients = exp.select(
            col("patient", "p"),
            exp.alias_(col("practice", "p"), "practice"),
            exp.alias_(self._age(), "age"),
            exp.alias_(col("sex", "p"), "sex"),
            exp.alias_(self._alive(), "_alive"),  # "_": no fact name starts with one
        ).from_(exp.alias_(exp.to_table("patients"), "p"), copy=False)
        registered = (
            exp.select("*")
            .from_(exp.alias_(exp.paren(self._with_facts(patients, first, ctes)), "r"), copy=False)
            .where(
                exp.and_(col("_alive"), is_true(self.condition(self.g.register, own=True))),
                copy=False,
            )
        )
        select = exp.select(exp.Column(this=exp.Star(), table=exp.to_identifier("registered")))
        select = select.from_(exp.alias_(exp.paren(registered), "registered"), copy=False)
        for target in self.g.targets:
            cte_name = f"goal_{target.name}"
            ctes.append((cte_name, self._goal_cte(target.measure)))
            select = select.join(
                exp.to_table(cte_name), using=["patient"], join_type="left", copy=False
            )
            select = select.select(
                exp.alias_(col("value", cte_name), f"{target.name}__goal"), append=True, copy=False
            )
        layered = self._with_facts(select, rest, ctes)
        outer = exp.select("*", exp.alias_(TRUE, "in_register")).from_(
            exp.alias_(exp.paren(layered), "facts"), copy=False
        )
        for target in self.g.targets:
            value, source, reason = self._own_target(target)
            outer = outer.select(
                exp.alias_(value, f"{target.name}__value"),
                exp.alias_(source, f"{target.name}__source"),
                exp.alias_(reason, f"{target.name}__reason"),
                append=True,
                copy=False,
            )
        for name, cte in ctes:
            outer = outer.with_(name, as_=cte, copy=False)
        return outer

    def _register_reads(self) -> set[str]:
        """The facts the register is decided on, with those its derived facts are built from."""
        found: set[str] = set()
        pending = list(references(self.g.register))
        while pending:
            name = pending.pop()
            fact = self.facts.get(name)
            if fact is None or name in found:
                continue  # a built-in (age, sex) or seen
            found.add(name)
            if isinstance(fact.primitive, t.Derived):
                pending.extend(references(fact.primitive.expr))
        return found

    def _with_facts(
        self,
        select: exp.Select,
        facts: Sequence[t.FactDef],
        ctes: list[tuple[str, exp.Expression]],
    ) -> exp.Select:
        """``select`` with ``facts`` as columns: each stored fact's CTE (added to ``ctes``)
        left-joined, then each derived fact as a column over them, in dependency order."""
        for fact in facts:
            if isinstance(fact.primitive, t.Derived):
                continue
            cte_name = f"f_{fact.name}"
            ctes.append((cte_name, self._fact_cte(fact.primitive)))
            select = select.join(
                exp.to_table(cte_name), using=["patient"], join_type="left", copy=False
            )
            select = select.select(*self._fact_columns(fact, cte_name), append=True, copy=False)
        layered = select
        for fact in facts:
            if isinstance(fact.primitive, t.Derived):
                value = _Expressions(self, own=True).compile(fact.primitive.expr)
                columns = [exp.alias_(value.v, fact.name)]
                if value.cmp is not None:
                    columns.append(exp.alias_(value.cmp, f"{fact.name}__cmp"))
                layered = exp.select("*", *columns).from_(
                    exp.alias_(exp.paren(layered), f"d_{fact.name}"), copy=False
                )
        return layered

    def _alive(self) -> exp.Expression:
        """As primitives.alive: not dead, or died after the reference date."""
        died_later = exp.GT(this=col("deceased_on", "p"), expression=lit(self.as_of))
        return exp.paren(
            exp.or_(
                exp.not_(exp.func("COALESCE", col("deceased", "p"), FALSE)),
                is_true(died_later),
                copy=False,
            )
        )

    def _age(self) -> exp.Expression:
        birth = col("birth_date", "p")
        a = self.as_of
        not_yet = exp.Case(
            ifs=[
                exp.If(
                    this=exp.or_(
                        exp.GT(this=exp.func("MONTH", birth), expression=lit(float(a.month))),
                        exp.and_(
                            exp.EQ(this=exp.func("MONTH", birth), expression=lit(float(a.month))),
                            exp.GT(this=exp.func("DAY", birth), expression=lit(float(a.day))),
                        ),
                    ),
                    true=lit(1.0),
                )
            ],
            default=lit(0.0),
        )
        years = arith(exp.Sub, lit(float(a.year)), exp.cast(exp.func("YEAR", birth), "DOUBLE"))
        return arith(exp.Sub, years, not_yet)

    def _vs_join(self, select: exp.Select, alias: str, valueset: str) -> exp.Select:
        on = exp.and_(
            exp.EQ(this=col("code", "v"), expression=col("code", alias)),
            exp.EQ(this=col("valueset", "v"), expression=lit(valueset)),
        )
        return select.join(exp.alias_(exp.to_table("valueset_codes"), "v"), on=on, copy=False)

    def _fact_cte(self, primitive: t.Primitive) -> exp.Select:
        as_of = lit(self.as_of)
        if isinstance(primitive, t.ObservationFact):
            start = lit(window_start(self.as_of, primitive.window))
            base = exp.select(
                col("patient", "o"),
                col("resource", "o"),
                col("record", "o"),
                col("date", "o"),
                col("value", "o"),
                col("comparator", "o"),
            ).from_(exp.alias_(exp.to_table("observations"), "o"), copy=False)
            base = self._vs_join(base, "o", primitive.valueset).where(
                exp.Between(this=col("date", "o"), low=start, high=as_of), copy=False
            )
            if primitive.which == "count":
                distinct = base.distinct(copy=False)
                return (
                    exp.select(col("patient"), exp.alias_(exp.Count(this=exp.Star()), "n"))
                    .from_(exp.alias_(exp.paren(distinct), "d"), copy=False)
                    .group_by(col("patient"), copy=False)
                )
            # the latest (earliest) by date, then resource, then record: one aggregate per patient,
            # as ORDER BY date DESC, resource DESC, record (ASC, ASC, ASC) would pick first
            latest = primitive.which == "latest"
            picked = (exp.ArgMax if latest else exp.ArgMin)(
                this=_struct(*(col(c) for c in _OBSERVATION_FIELDS)),
                expression=_struct(
                    col("date"),
                    col("resource"),
                    exp.Neg(this=col("record")) if latest else col("record"),
                    names=("d", "r", "n"),
                ),
            )
            return _unpack(base, picked, _OBSERVATION_FIELDS)
        if isinstance(primitive, t.ActiveMedication):
            started = exp.or_(
                exp.Is(this=col("start", "m"), expression=NULL),
                exp.LTE(this=col("start", "m"), expression=as_of),
            )
            ended_later = exp.and_(
                exp.not_(exp.Is(this=col("end", "m"), expression=NULL)),
                exp.GTE(this=col("end", "m"), expression=as_of),
                in_list(col("status", "m"), TAKEN_STATUSES),
            )
            open_active = exp.and_(
                exp.Is(this=col("end", "m"), expression=NULL),
                exp.EQ(this=col("status", "m"), expression=lit("active")),
            )
            query = (
                exp.select(col("patient", "m"))
                .distinct(copy=False)
                .from_(exp.alias_(exp.to_table("medications"), "m"), copy=False)
            )
            return self._vs_join(query, "m", primitive.valueset).where(
                exp.and_(started, exp.paren(exp.or_(ended_later, open_active))), copy=False
            )
        if isinstance(primitive, t.ContinuousUse | t.MedicationStarted):
            return self._episodes(primitive)
        if isinstance(primitive, t.ConditionPresent):
            began = exp.func("COALESCE", col("onset", "c"), col("recorded", "c"))
            when = exp.or_(
                exp.Is(this=began, expression=NULL), exp.LTE(this=began, expression=as_of)
            )
            if not primitive.include_resolved:
                abated_later = exp.and_(
                    exp.not_(exp.Is(this=col("abatement", "c"), expression=NULL)),
                    exp.GT(this=col("abatement", "c"), expression=as_of),
                )
                still = exp.and_(
                    exp.Is(this=col("abatement", "c"), expression=NULL),
                    in_list(col("clinical_status", "c"), PRESENT_STATUSES),
                )
                when = exp.and_(when, exp.paren(exp.or_(abated_later, still)))
            query = (
                exp.select(col("patient", "c"))
                .distinct(copy=False)
                .from_(exp.alias_(exp.to_table("conditions"), "c"), copy=False)
            )
            return self._vs_join(query, "c", primitive.valueset).where(when, copy=False)
        if isinstance(primitive, t.ConditionOnset):
            query = exp.select(
                col("patient", "c"), exp.alias_(exp.Min(this=col("onset", "c")), "onset")
            ).from_(exp.alias_(exp.to_table("conditions"), "c"), copy=False)
            return (
                self._vs_join(query, "c", primitive.valueset)
                .where(exp.LTE(this=col("onset", "c"), expression=as_of), copy=False)
                .group_by(col("patient", "c"), copy=False)
            )
        if isinstance(primitive, t.PatientGoal):
            return self._goal_cte(primitive.valueset)
        raise TypeError(f"no SQL for {type(primitive).__name__}")

    def _goal_cte(self, valueset: str) -> exp.Select:
        as_of = lit(self.as_of)
        started = exp.func("COALESCE", col("start", "g"), lit(dt.date(1, 1, 1)))
        base = exp.select(
            col("patient", "g"),
            col("value", "g"),
            exp.alias_(started, "started"),
            col("resource", "g"),
        ).from_(exp.alias_(exp.to_table("goals"), "g"), copy=False)
        base = self._vs_join(base, "g", valueset).where(
            exp.or_(
                exp.Is(this=col("start", "g"), expression=NULL),
                exp.LTE(this=col("start", "g"), expression=as_of),
            ),
            copy=False,
        )
        picked = exp.ArgMax(  # the latest started goal, the highest resource id, the lowest value
            this=_struct(col("value")),
            expression=_struct(
                col("started"), col("resource"), exp.Neg(this=col("value")), names=("s", "r", "v")
            ),
        )
        return _unpack(base, picked, ("value",))

    def _episodes(self, primitive: t.ContinuousUse | t.MedicationStarted) -> exp.Select:
        """Gaps and islands: spans merged when the gap is at most max_gap_days (as in Python)."""
        as_of = lit(self.as_of)
        end = exp.Case(
            ifs=[
                exp.If(
                    this=exp.not_(exp.Is(this=col("end", "m"), expression=NULL)),
                    true=col("end", "m"),
                ),
                exp.If(this=exp.EQ(this=col("status", "m"), expression=lit("active")), true=as_of),
            ],
            default=col("start", "m"),
        )
        capped = exp.Case(
            ifs=[exp.If(this=exp.GT(this=end, expression=as_of), true=as_of)], default=end
        )
        spans = (
            exp.select(
                col("patient", "m"),
                col("resource", "m"),
                exp.alias_(col("start", "m"), "s"),
                exp.alias_(capped, "e"),
            )
            .distinct(copy=False)
            .from_(exp.alias_(exp.to_table("medications"), "m"), copy=False)
        )
        spans = self._vs_join(spans, "m", primitive.valueset).where(
            exp.and_(
                exp.not_(exp.Is(this=col("start", "m"), expression=NULL)),
                exp.LTE(this=col("start", "m"), expression=as_of),
                in_list(col("status", "m"), TAKEN_STATUSES),
            ),
            copy=False,
        )
        order = exp.Order(
            expressions=[
                exp.Ordered(this=col("s")),
                exp.Ordered(this=col("e")),
                exp.Ordered(this=col("resource")),
            ]
        )
        previous = exp.Window(
            this=exp.Max(this=col("e")),
            partition_by=[col("patient")],
            order=order,
            spec=exp.WindowSpec(
                kind="ROWS",
                start="UNBOUNDED",
                start_side="PRECEDING",
                end=exp.Literal.number(1),
                end_side="PRECEDING",
            ),
        )
        gap = exp.DateDiff(this=col("s"), expression=col("prev"), unit=exp.var("DAY"))
        new = exp.Case(
            ifs=[
                exp.If(
                    this=exp.or_(
                        exp.Is(this=col("prev"), expression=NULL),
                        exp.GT(this=gap, expression=lit(float(primitive.max_gap_days + 1))),
                    ),
                    true=lit(1.0),
                )
            ],
            default=lit(0.0),
        )
        flagged = exp.select("*", exp.alias_(previous, "prev")).from_(
            exp.alias_(exp.paren(spans), "sp"), copy=False
        )
        marked = exp.select("*", exp.alias_(new, "new")).from_(
            exp.alias_(exp.paren(flagged), "fl"), copy=False
        )
        numbering = exp.Window(
            this=exp.Sum(this=col("new")),
            partition_by=[col("patient")],
            order=order,
            spec=exp.WindowSpec(
                kind="ROWS", start="UNBOUNDED", start_side="PRECEDING", end="CURRENT ROW"
            ),
        )
        numbered = exp.select("*", exp.alias_(numbering, "episode")).from_(
            exp.alias_(exp.paren(marked), "mk"), copy=False
        )
        episodes = (
            exp.select(
                col("patient"),
                exp.alias_(exp.Min(this=col("s")), "s"),
                exp.alias_(exp.Max(this=col("e")), "e"),
            )
            .from_(exp.alias_(exp.paren(numbered), "nb"), copy=False)
            .group_by(col("patient"), col("episode"), copy=False)
        )
        if isinstance(primitive, t.ContinuousUse):
            edge = lit(window_start(self.as_of, primitive.longer_than))
            keep = exp.and_(
                exp.GTE(this=col("e"), expression=as_of), exp.LT(this=col("s"), expression=edge)
            )
        else:
            edge = lit(window_start(self.as_of, primitive.within))
            keep = exp.GTE(this=col("s"), expression=edge)
        return (
            exp.select(col("patient"))
            .distinct(copy=False)
            .from_(exp.alias_(exp.paren(episodes), "ep"), copy=False)
            .where(keep, copy=False)
        )

    def _fact_columns(self, fact: t.FactDef, cte: str) -> list[exp.Expression]:
        primitive = fact.primitive
        name = fact.name
        if isinstance(primitive, t.ObservationFact):
            if primitive.which == "count":
                return [
                    exp.alias_(
                        exp.cast(exp.func("COALESCE", col("n", cte), lit(0.0)), "DOUBLE"), name
                    )
                ]
            return [
                exp.alias_(col("value", cte), f"{name}__value"),
                exp.alias_(col("comparator", cte), f"{name}__cmp"),
                exp.alias_(col("date", cte), f"{name}__date"),
                exp.alias_(col("resource", cte), f"{name}__resource"),
            ]
        if isinstance(primitive, t.ConditionOnset):
            return [exp.alias_(col("onset", cte), name)]
        if isinstance(primitive, t.PatientGoal):
            return [exp.alias_(col("value", cte), name)]
        return [exp.alias_(exp.not_(exp.Is(this=col("patient", cte), expression=NULL)), name)]

    def _own_target(
        self, target: t.TargetDef
    ) -> tuple[exp.Expression, exp.Expression, exp.Expression]:
        goal = col(f"{target.name}__goal")
        has_goal = exp.not_(exp.Is(this=goal, expression=NULL))
        values = [exp.If(this=has_goal, true=goal)]
        sources = [exp.If(this=has_goal, true=lit("goal"))]
        reasons = [exp.If(this=has_goal, true=lit(-1.0))]
        for number, case in enumerate(target.cases):
            if case.when is None:
                default = (lit(case.value), lit("default"), lit(float(number)))
                break
            condition = is_true(self.condition(case.when, own=True))
            values.append(exp.If(this=condition, true=lit(case.value)))
            sources.append(exp.If(this=condition, true=lit("case")))
            reasons.append(exp.If(this=condition, true=lit(float(number))))
        return (
            exp.Case(ifs=values, default=default[0]),
            exp.Case(ifs=sources, default=default[1]),
            exp.Case(ifs=reasons, default=default[2]),
        )

    # -- step 3: recommendations and indicators --------------------------------------------------

    def outcomes(self) -> exp.Select:
        base = table_name(self.index, "base")
        # b.* and not *: the winners' own columns (patient, value, ...) would otherwise repeat
        # names; engines then differ on which duplicate a row's field by that name returns.
        select = exp.select(exp.Column(this=exp.Star(), table=exp.to_identifier("b"))).from_(
            exp.alias_(exp.to_table(base), "b"), copy=False
        )
        for target in self.g.targets:
            alias = f"w_{target.name}"
            on = exp.and_(
                exp.EQ(this=col("patient", alias), expression=col("patient", "b")),
                exp.EQ(this=col("measure", alias), expression=lit(target.measure)),
            )
            select = select.join(
                exp.alias_(exp.to_table("winners"), alias), on=on, join_type="left", copy=False
            )
            select = select.select(
                exp.alias_(col("value", alias), f"{target.name}__shared"),
                exp.alias_(col("source", alias), f"{target.name}__shared_source"),
                exp.alias_(col("reason", alias), f"{target.name}__shared_reason"),
                exp.alias_(col("guideline", alias), f"{target.name}__set_by"),
                append=True,
                copy=False,
            )
        outer = exp.select(exp.Star()).from_(exp.alias_(exp.paren(select), "o"), copy=False)
        registered = col("in_register")
        for number, rec in enumerate(self.g.recommendations):
            fires = exp.and_(registered, is_true(self.condition(rec.when, own=False)))
            outer = outer.select(exp.alias_(fires, f"rec_{number}"), append=True, copy=False)
        for number, indicator in enumerate(self.g.indicators):
            eligible = registered
            if indicator.denominator is not None:
                eligible = exp.and_(
                    eligible, is_true(self.condition(indicator.denominator, own=False))
                )
            excepted = FALSE
            if indicator.exceptions is not None:
                excepted = exp.and_(
                    exp.paren(eligible), is_true(self.condition(indicator.exceptions, own=False))
                )
            denominator = exp.and_(exp.paren(eligible), exp.not_(exp.paren(excepted)))
            numerator = exp.and_(
                exp.paren(denominator), is_true(self.condition(indicator.numerator, own=False))
            )
            outer = outer.select(
                exp.alias_(denominator, f"ind_{number}_den"),
                exp.alias_(numerator, f"ind_{number}_num"),
                exp.alias_(excepted, f"ind_{number}_exc"),
                append=True,
                copy=False,
            )
        return outer

    # -- expressions -------------------------------------------------------------------------------

    def condition(self, expr: t.Expr, own: bool) -> exp.Expression:
        return self.value(expr, own).v

    def value(self, expr: t.Expr, own: bool) -> Value:
        """The expression's SQL with its comparator, when its value may be a bound."""
        return _Expressions(self, own).compile(expr)


class _Expressions:
    """Typed tree -> SQL, mirroring engine.expressions (three-valued logic, bounds)."""

    def __init__(self, sql: GuidelineSql, own: bool) -> None:
        self.sql = sql
        self.own = own  # targets: the guideline's own (step 1) or the shared winners (step 3)

    def compile(self, expr: t.Expr) -> Value:
        if isinstance(expr, t.Literal):
            if isinstance(expr.value, float):
                # a DOUBLE, as the per-patient engine's float: both dialects read 58.0 as a
                # DECIMAL, which shows as '58.0' on a list and makes 0.1 + 0.2 = 0.3 true
                return Value(exp.cast(lit(expr.value), "DOUBLE"))
            return Value(lit(expr.value))
        if isinstance(expr, t.Ref):
            return self._ref(expr)
        if isinstance(expr, t.Field):
            return self._field(expr)
        if isinstance(expr, t.Compare):
            return Value(self._compare(expr.op, self.compile(expr.left), self.compile(expr.right)))
        if isinstance(expr, t.Logic):
            parts = [exp.paren(self.compile(o).v) for o in expr.operands]
            return Value(exp.and_(*parts) if expr.op == "and" else exp.or_(*parts))
        if isinstance(expr, t.Not):
            return Value(exp.not_(exp.paren(self.compile(expr.operand).v)))
        if isinstance(expr, t.Arithmetic):
            return self._arithmetic(expr.op, self.compile(expr.left), self.compile(expr.right))
        if isinstance(expr, t.Call):
            return self._call(expr)
        raise TypeError(f"no SQL for {type(expr).__name__}")

    def _ref(self, expr: t.Ref) -> Value:
        name = expr.name
        fact = self.sql.facts.get(name)
        if fact is not None and isinstance(fact.primitive, t.Derived):
            bound = self.sql.derived_bounds.get(name, False)
            return Value(col(name), col(f"{name}__cmp") if bound else None)
        if isinstance(expr.type, ty.Record):
            raise TypeError("records are read through their fields")
        return Value(col(name))

    def _field(self, expr: t.Field) -> Value:
        record = expr.record
        assert isinstance(record, t.Ref)
        name = record.name
        if name in self.sql.targets:
            if expr.name == "value":
                return Value(col(f"{name}__value" if self.own else f"{name}__shared"))
            if expr.name == "source":
                return Value(col(f"{name}__source" if self.own else f"{name}__shared_source"))
            raise TypeError("target reasons are texts outside SQL")
        if expr.name == "value":
            return Value(col(f"{name}__value"), col(f"{name}__cmp"))
        return Value(col(f"{name}__{expr.name}"))

    def _call(self, expr: t.Call) -> Value:
        if expr.function == "exists":
            (arg,) = expr.args
            if isinstance(arg, t.Ref) and isinstance(arg.type, ty.Record):
                if arg.name in self.sql.targets:
                    return Value(TRUE)
                return Value(exp.not_(exp.Is(this=col(f"{arg.name}__resource"), expression=NULL)))
            return Value(exp.not_(exp.Is(this=exp.paren(self.compile(arg).v), expression=NULL)))
        day = self.compile(expr.args[0]).v
        as_of = self.sql.as_of
        if expr.function == "days_since":
            return Value(
                exp.cast(
                    exp.DateDiff(this=lit(as_of), expression=day, unit=exp.var("DAY")), "DOUBLE"
                )
            )
        years = arith(exp.Sub, lit(float(as_of.year)), exp.cast(exp.func("YEAR", day), "DOUBLE"))
        months_part = arith(
            exp.Sub, lit(float(as_of.month)), exp.cast(exp.func("MONTH", day), "DOUBLE")
        )
        day_short = exp.Case(
            ifs=[
                exp.If(
                    this=exp.GT(this=exp.func("DAY", day), expression=lit(float(as_of.day))),
                    true=lit(1.0),
                )
            ],
            default=lit(0.0),
        )
        months = arith(
            exp.Sub, arith(exp.Add, arith(exp.Mul, years, lit(12.0)), months_part), day_short
        )
        if expr.function == "months_since":
            return Value(months)
        return Value(exp.func("FLOOR", arith(exp.Div, months, lit(12.0))))

    def _arithmetic(self, op: str, a: Value, b: Value) -> Value:
        fn = {"+": exp.Add, "-": exp.Sub, "*": exp.Mul, "/": exp.Div}[op]
        plain = arith(fn, a.v, b.v)
        if op == "/":
            plain = exp.Case(
                ifs=[exp.If(this=exp.EQ(this=b.v, expression=lit(0.0)), true=NULL)], default=plain
            )
        if a.cmp is None and b.cmp is None:
            return Value(plain)
        a_bound = exp.not_(exp.Is(this=a.cmp, expression=NULL)) if a.cmp is not None else FALSE
        b_bound = exp.not_(exp.Is(this=b.cmp, expression=NULL)) if b.cmp is not None else FALSE
        positive = {
            "+": TRUE,
            "-": TRUE,
            "*": exp.GT(this=b.v, expression=lit(0.0)),
            "/": exp.GT(this=b.v, expression=lit(0.0)),
        }[op]
        left_ok = exp.and_(a_bound, exp.not_(b_bound), positive)
        right_ok = exp.and_(
            b_bound,
            exp.not_(a_bound),
            {"+": TRUE, "*": exp.GT(this=a.v, expression=lit(0.0))}.get(op, FALSE),
        )
        value = exp.Case(
            ifs=[
                exp.If(this=exp.and_(exp.not_(a_bound), exp.not_(b_bound)), true=plain),
                exp.If(this=exp.or_(left_ok, right_ok), true=plain),
            ],
            default=NULL,
        )
        comparator = exp.Case(
            ifs=[
                exp.If(this=left_ok, true=a.cmp or NULL),
                exp.If(this=right_ok, true=b.cmp or NULL),
            ],
            default=NULL,
        )
        return Value(value, comparator)

    def _compare(self, op: str, a: Value, b: Value) -> exp.Expression:
        fn = {"=": exp.EQ, "!=": exp.NEQ, "<": exp.LT, "<=": exp.LTE, ">": exp.GT, ">=": exp.GTE}[
            op
        ]
        plain = fn(this=exp.paren(a.v), expression=exp.paren(b.v))
        if a.cmp is None and b.cmp is None:
            return plain
        bounded = exp.or_(
            *(exp.not_(exp.Is(this=c, expression=NULL)) for c in (a.cmp, b.cmp) if c is not None)
        )
        return exp.Case(
            ifs=[exp.If(this=exp.not_(exp.paren(bounded)), true=plain)],
            default=_interval_compare(op, a, b),
        )


def _interval(
    value: Value,
) -> tuple[exp.Expression, exp.Expression, exp.Expression, exp.Expression]:
    """(low, low included, high, high included) of a value that may be a bound."""
    v, c = value.v, value.cmp
    if c is None:
        return v, TRUE, v, TRUE

    def pick(
        gt: exp.Expression,
        ge: exp.Expression,
        lt: exp.Expression,
        le: exp.Expression,
        plain: exp.Expression,
    ) -> exp.Expression:
        return exp.Case(
            ifs=[
                exp.If(this=exp.EQ(this=c, expression=lit(">")), true=gt),
                exp.If(this=exp.EQ(this=c, expression=lit(">=")), true=ge),
                exp.If(this=exp.EQ(this=c, expression=lit("<")), true=lt),
                exp.If(this=exp.EQ(this=c, expression=lit("<=")), true=le),
            ],
            default=plain,
        )

    minus_inf = exp.Neg(this=INF)
    return (
        pick(v, v, minus_inf, minus_inf, v),
        pick(FALSE, TRUE, FALSE, FALSE, TRUE),
        pick(INF, INF, v, v, v),
        pick(FALSE, FALSE, FALSE, TRUE, TRUE),
    )


def _interval_compare(op: str, a: Value, b: Value) -> exp.Expression:
    """engine.expressions.compare_bounds, as SQL: true or false only when certain."""
    if op in (">", ">="):
        return _interval_compare("<" if op == ">" else "<=", b, a)
    if op == "!=":
        return exp.not_(exp.paren(_interval_compare("=", a, b)))
    alo, alo_in, ahi, ahi_in = _interval(a)
    blo, blo_in, bhi, bhi_in = _interval(b)

    def decide(true_when: exp.Expression | None, false_when: exp.Expression) -> exp.Expression:
        ifs = [exp.If(this=false_when, true=FALSE)]
        if true_when is not None:
            ifs.insert(0, exp.If(this=true_when, true=TRUE))
        return exp.Case(ifs=ifs, default=NULL)

    if op == "=":
        disjoint = exp.or_(
            exp.LT(this=ahi, expression=blo),
            exp.LT(this=bhi, expression=alo),
            exp.and_(exp.EQ(this=ahi, expression=blo), exp.not_(exp.and_(ahi_in, blo_in))),
            exp.and_(exp.EQ(this=bhi, expression=alo), exp.not_(exp.and_(bhi_in, alo_in))),
        )
        return decide(None, disjoint)
    if op == "<":
        certain = exp.or_(
            exp.LT(this=ahi, expression=blo),
            exp.and_(exp.EQ(this=ahi, expression=blo), exp.not_(exp.and_(ahi_in, blo_in))),
        )
        return decide(certain, exp.GTE(this=alo, expression=bhi))
    certain = exp.LTE(this=ahi, expression=blo)
    impossible = exp.or_(
        exp.GT(this=alo, expression=bhi),
        exp.and_(exp.EQ(this=alo, expression=bhi), exp.not_(exp.and_(alo_in, bhi_in))),
    )
    return decide(certain, impossible)


def winners(guidelines: list[tuple[int, t.CompiledGuideline]]) -> exp.Expression:
    """Step 2: per patient and measure, the target of the highest precedence (then guideline id)."""
    parts = []
    for index, g in guidelines:
        for target in g.targets:
            parts.append(
                exp.select(
                    col("patient"),
                    exp.alias_(lit(target.measure), "measure"),
                    exp.alias_(lit(float(target.precedence)), "precedence"),
                    exp.alias_(lit(g.id), "guideline"),
                    exp.alias_(col(f"{target.name}__value"), "value"),
                    exp.alias_(col(f"{target.name}__source"), "source"),
                    exp.alias_(col(f"{target.name}__reason"), "reason"),
                )
                .from_(table_name(index, "base"), copy=False)
                .where(col("in_register"), copy=False)
            )
    if not parts:
        return exp.select(
            exp.alias_(exp.cast(NULL, "VARCHAR"), "patient"),
            exp.alias_(exp.cast(NULL, "VARCHAR"), "measure"),
            exp.alias_(exp.cast(NULL, "VARCHAR"), "guideline"),
            exp.alias_(exp.cast(NULL, "DOUBLE"), "value"),
            exp.alias_(exp.cast(NULL, "VARCHAR"), "source"),
            exp.alias_(exp.cast(NULL, "DOUBLE"), "reason"),
        ).where(FALSE, copy=False)
    union: exp.Expression = parts[0]
    for part in parts[1:]:
        union = exp.union(union, part, distinct=False)
    order = exp.Order(
        expressions=[
            exp.Ordered(this=col("precedence"), desc=True),
            exp.Ordered(this=col("guideline"), desc=True),
        ]
    )
    ranked = exp.Window(
        this=exp.RowNumber(), partition_by=[col("patient"), col("measure")], order=order
    )
    numbered = exp.select("*", exp.alias_(ranked, "rn")).from_(
        exp.alias_(exp.paren(union), "u"), copy=False
    )
    return (
        exp.select(
            col("patient"),
            col("measure"),
            col("guideline"),
            col("value"),
            col("source"),
            col("reason"),
        )
        .from_(exp.alias_(exp.paren(numbered), "n"), copy=False)
        .where(exp.EQ(this=col("rn"), expression=lit(1.0)), copy=False)
    )


class UnsweepableGuidelineError(ValueError):
    """The SQL engine cannot build a guideline's queries; the message names its file."""


@contextlib.contextmanager
def _building(guideline: t.CompiledGuideline) -> Iterator[None]:
    """Any failure to build a guideline's SQL, as the error a sweep or a check reports."""
    try:
        yield
    except Exception as exc:  # whatever the population engine lacks for this rule file
        raise UnsweepableGuidelineError(
            f"{guideline.file}: {guideline.id} {guideline.version}: the population engine "
            f"cannot evaluate this guideline ({type(exc).__name__}: {exc}); a sweep that "
            "includes it would stop"
        ) from exc


def compile_sweep(guidelines: GuidelineSet, as_of: dt.date) -> list[tuple[int, GuidelineSql]]:
    """The guidelines in force on the date, numbered for table names."""
    compiled = []
    for index, guideline in enumerate(guidelines.in_force(as_of)):
        with _building(guideline):
            compiled.append((index, GuidelineSql(index, guideline, as_of)))
    return compiled


def sweep_problems(guidelines: GuidelineSet) -> list[str]:
    """One line per guideline version the SQL engine cannot build its queries for.

    Why: such a rule file loads and evaluates per patient, and then stops every sweep that
    includes it, months later and in a quality unit's hands. The rule language's load checks
    reject what is known not to work (see conformance/engines/test_language_agreement.py); this
    catches whatever else the population engine lacks, when the guideline is checked."""
    problems = []
    for index, guideline in enumerate(guidelines.guidelines):
        try:
            with _building(guideline):
                sql = GuidelineSql(index, guideline, guideline.starts.date())
                sql.base()
                sql.outcomes()
        except UnsweepableGuidelineError as exc:
            problems.append(str(exc))
    return problems


@dataclass(frozen=True, slots=True)
class RenderedSweep:
    """One reference date's sweep as SQL text for one dialect: the steps' queries, rendered once.

    Why cached: building and rendering the trees of the whole library takes a few seconds per
    date and dialect, and a run needs them more than once (the sweep, then the list reasons).
    """

    compiled: tuple[tuple[int, GuidelineSql], ...]
    winners: str
    outcomes: tuple[str, ...]
    # per compiled guideline: its base query's CTEs in order, and the query without them; both
    # engines compute each CTE first, once per sweep (DuckDB: bounded memory; Spark: a CTE read
    # twice is not computed twice)
    base_steps: tuple[tuple[tuple[Cte, ...], str], ...]


@dataclass(frozen=True, slots=True)
class Cte:
    """One CTE of a guideline's base query, rendered alone as a table of its own.

    ``key`` names its content: the query text, in which the earlier CTEs it reads are already
    named by their keys. Two guidelines' CTEs with the same key give the same rows (eGFR in the
    last year, medication in force), so an engine computes ``table`` once for the whole sweep.
    """

    name: str  # as in the guideline's query: f_<fact>, goal_<target>
    key: str
    sql: str  # reads earlier CTEs by their tables

    @property
    def table(self) -> str:
        return f"shared_{self.key}"


def last_uses(base_steps: Sequence[tuple[Sequence[Cte], str]]) -> dict[str, int]:
    """CTE key -> the last guideline (position in ``base_steps``) that reads it: when an engine
    that shares CTE results across guidelines may let go of one."""
    return {cte.key: n for n, (ctes, _) in enumerate(base_steps) for cte in ctes}


_RENDERED: dict[tuple[object, ...], RenderedSweep] = {}
_RENDERED_MAX = 16


def rendered_sweep(guidelines: GuidelineSet, as_of: dt.date, dialect: str) -> RenderedSweep:
    """:func:`compile_sweep` rendered for ``dialect``, cached per (guidelines in force by id,
    version and content hash, date, dialect): the same content always renders the same SQL."""
    in_force = guidelines.in_force(as_of)
    key = (dialect, as_of, tuple((g.id, g.version, g.content_hash) for g in in_force))
    found = _RENDERED.get(key)
    if found is not None:
        return found
    compiled = tuple(compile_sweep(guidelines, as_of))
    bases, outcomes = [], []
    for _, sql in compiled:
        with _building(sql.g):
            bases.append(sql.base())
            outcomes.append(sql.outcomes().sql(dialect))
    found = RenderedSweep(
        compiled,
        winners([(i, s.g) for i, s in compiled]).sql(dialect),
        tuple(outcomes),
        tuple(_split_ctes(base, dialect) for base in bases),
    )
    if len(_RENDERED) >= _RENDERED_MAX:
        _RENDERED.pop(next(iter(_RENDERED)))
    _RENDERED[key] = found
    return found


def _split_ctes(query: exp.Select, dialect: str) -> tuple[tuple[Cte, ...], str]:
    """A query's CTEs, each rendered alone, and the query rendered without them, every reference
    to a CTE replaced by its table (``shared_<key> AS <cte name>``, so qualified columns still
    resolve). Run in order as those tables, they give the query's result: the CTEs are plain and
    refer only to tables and earlier CTEs.

    Why tables named by content rather than views named as in the query: an engine shares the
    tables across guidelines, and Spark uncaches a cached result when a view over it is dropped
    or replaced (every guideline's shared facts would be computed again)."""
    with_ = query.args.get("with_")
    if with_ is None:
        return (), query.sql(dialect)
    tables: dict[str, str] = {}
    ctes = []
    for cte in with_.expressions:
        text = _reading_tables(cte.this, tables).sql(dialect)
        found = Cte(cte.alias, hashlib.sha256(text.encode()).hexdigest()[:16], text)
        tables[cte.alias] = found.table
        ctes.append(found)
    bare = query.copy()
    bare.set("with_", None)
    return tuple(ctes), _reading_tables(bare, tables).sql(dialect)


def _reading_tables(query: exp.Expression, tables: Mapping[str, str]) -> exp.Expression:
    """``query`` with each reference to a CTE named in ``tables`` replaced by its table."""
    query = query.copy()
    for table in list(query.find_all(exp.Table)):
        if table.name in tables and not table.args.get("db"):
            alias = table.alias or table.name
            table.replace(exp.alias_(exp.to_table(tables[table.name]), alias, table=True))
    return query
