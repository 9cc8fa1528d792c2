"""Rule files in, compiled guidelines out, or every error with its file, line and column.

Steps per file: YAML (with positions) -> pydantic schema -> names, value sets, dependency order
-> typed expressions -> the engine-neutral tree (:mod:`rules.tree`). Nothing stops at the first
error: an author sees all of them at once.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from difflib import get_close_matches
from functools import cache
from graphlib import CycleError, TopologicalSorter
from pathlib import Path as FsPath
from typing import Any

from pydantic import BaseModel, ValidationError

from fhir_adapter.codes import canonical_coding
from fhir_adapter.units import canonical_unit
from rules import schema as s
from rules import tree as t
from rules import types as ty
from rules.effective import instant
from rules.errors import Position, RuleError
from rules.expressions import (
    ExpressionError,
    UsesABrokenNameError,
    names_in,
    parse,
    parse_condition,
    references,
)
from rules.rendering import is_observation, width
from rules.source import Path, SourceDocument, YamlRefusedError, YamlSyntaxError, parse_yaml
from rules.valuesets import CompiledValueSet, compile_codes

# Code systems whose every code no ServiceRequest can order, and what they name instead (ICPC-2
# and SKS also hold procedures, so they are left to the author)
_NOT_ORDERABLE = {"atc": "a medicine", "rxnorm": "a medicine", "icd10": "a diagnosis"}
SUMMARY_LIMIT = 140  # CDS Hooks: summary SHALL be fewer than 140 characters
BUILTINS: dict[str, ty.Type] = {"age": ty.NUMBER, "sex": ty.SEX}


@dataclass(slots=True)
class Problems:
    """Collects errors for one file, placing each at the right line and column."""

    document: SourceDocument
    errors: list[RuleError] = field(default_factory=list)

    def at(self, path: Path, message: str, column_offset: int | None = None) -> None:
        if column_offset is None:
            position = self.document.position(path)
        else:
            position = self.document.offset(path, column_offset)
        self.errors.append(RuleError(self.document.file, position, message))

    def expression(
        self, path: Path, text: str, build: Callable[[str], t.Expr], offset: int = 0
    ) -> t.Expr | None:
        """Parse an expression, reporting a failure at the character it concerns."""
        try:
            return build(text)
        except UsesABrokenNameError:
            return None  # its cause is reported where it is
        except ExpressionError as exc:
            self.at(path, f"{exc.message} in: {text.strip()}", offset + exc.column - 1)
            return None


@dataclass(frozen=True, slots=True)
class GuidelineFile:
    """A compiled guideline together with its test cases and where they were written."""

    guideline: t.CompiledGuideline
    cases: tuple[s.GuidelineCase, ...]
    document: SourceDocument


def read_document(path: FsPath, display: str) -> tuple[SourceDocument | None, list[RuleError]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, [RuleError(display, None, f"cannot read the file: {exc}")]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [_not_utf8(display, data, exc)]
    try:
        return parse_yaml(text, display), []
    except YamlRefusedError as exc:
        return None, [RuleError(display, exc.position, str(exc))]
    except YamlSyntaxError as exc:
        return None, [RuleError(display, exc.position, f"not valid YAML: {exc}")]


def _not_utf8(display: str, data: bytes, exc: UnicodeDecodeError) -> RuleError:
    """Where the first byte that is not UTF-8 is: editors that save Latin-1 (Windows Notepad
    of old, some Excel exports) turn æ, ø and å into exactly such bytes."""
    line_start = data.rfind(b"\n", 0, exc.start) + 1
    column = len(data[line_start : exc.start].decode("utf-8", errors="replace")) + 1
    position = Position(data.count(b"\n", 0, exc.start) + 1, column)
    byte = data[exc.start]
    message = f"the file is not UTF-8 (byte 0x{byte:02x} here); save it as UTF-8"
    return RuleError(display, position, message)


def validate_model(model: type[BaseModel], problems: Problems) -> Any:
    """Validate the document against a schema model, turning pydantic errors into plain words."""
    try:
        return model.model_validate(problems.document.data)
    except ValidationError as exc:
        for error in _one_per_union(exc.errors(include_url=False)):
            key = ("<key>",) if error["type"] == "extra_forbidden" else ()
            problems.at((*_path(error), *key), _plain(error))
        return None


@cache
def _keys_of_rule_files() -> frozenset[str]:
    """Every key a rule or value-set file has somewhere: a known key where it is unknown is
    most often a line indented to the wrong level."""
    models = (m for m in vars(s).values() if isinstance(m, type) and issubclass(m, BaseModel))
    return frozenset(f.alias or name for m in models for name, f in m.model_fields.items())


def _path(error: Any) -> tuple[int | str, ...]:
    """The error's place in the document: pydantic puts the members of a union it tried into
    ``loc`` as type names (``list[function-after[...]]``), which are no keys of the file."""
    return tuple(p for p in error["loc"] if isinstance(p, int) or "[" not in p)


def _one_per_union(errors: list[Any]) -> list[Any]:
    """Of a union's errors for one value (``code: Code | list[Code]``), the ones for the form
    the author wrote: a 'should be a valid list' beside the reason a single code failed is
    false, since the author never meant a list."""
    paths = [_path(e) for e in errors]
    tried = {p for p, e in zip(paths, errors, strict=True) if len(p) < len(e["loc"])}
    per_place = Counter(paths)
    shapes = {"list_type", "dict_type", "model_type"}
    return [
        e
        for p, e in zip(paths, errors, strict=True)
        if not (e["type"] in shapes and p in tried and per_place[p] > 1)
    ]


def _plain(error: Any) -> str:
    loc = _path(error)
    key = str(loc[-1]) if loc else "file"
    if len(loc) > 1 and isinstance(loc[-1], int):  # an item of a list: codes[2]
        key = f"{loc[-2]}[{loc[-1]}]"
    kind = error["type"]
    if kind == "missing":
        return f"'{key}' is required here"
    if kind == "extra_forbidden":
        return f"unknown key '{key}'{_unknown_key_hint(key)}"
    if kind == "string_pattern_mismatch":
        pattern = error.get("ctx", {}).get("pattern")
        meant = _duration_meant(error["input"]) if pattern == s.DURATION_PATTERN else None
        form = f"'{meant}'" if meant else s.PATTERN_FORMS.get(pattern)
        return f"'{error['input']}' is not a valid {key}" + (f" (write {form})" if form else "")
    if kind == "string_type" and isinstance(error["input"], bool | int | float):
        read = "true or false" if isinstance(error["input"], bool) else "a number"
        return (
            f"{key}: YAML reads this as {read} ({error['input']!r}), not as text; put it in quotes"
        )
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "literal_error" and isinstance(error["input"], str):
        meant = _literal_meant(error["input"], re.findall(r"'([^']*)'", message))
        message += f"; did you mean '{meant}'?" if meant else ""
    return f"{key}: {message}"


def _literal_meant(given: str, allowed: list[str]) -> str | None:
    """'warn' is 'warning'; 'kvinde' (as a Danish card shows it) is 'female'."""
    folded = given.strip().lower()
    danish = {da: code for code, da, _ in ty.SEX.words}
    if danish.get(folded) in allowed:
        return danish[folded]
    close = get_close_matches(folded, allowed, n=1, cutoff=0.5)
    return close[0] if close else None


_DURATION_UNITS = {
    "days": ("d", "dag", "dage", "dg", "day"),
    "weeks": ("w", "wk", "wks", "uge", "uger", "week"),
    "months": ("m", "md", "mdr", "mdr.", "mnd", "mnd.", "måned", "måneder", "mo", "mth", "month"),
    "years": ("y", "yr", "yrs", "år", "aar", "year"),
}


def _duration_meant(text: str) -> str | None:
    """'24 mdr' is '24 months': the number the author wrote, with the unit in English."""
    match = re.fullmatch(r"\s*(\d+)\s*(\S+)\s*", text)
    if match is None:
        return None
    number, unit = match.groups()
    english = next((e for e, words in _DURATION_UNITS.items() if unit.lower() in (e, *words)), None)
    return f"{number} {english}" if english else None


def _unknown_key_hint(key: str) -> str:
    known = _keys_of_rule_files()
    if key in known:
        return f" here; '{key}' belongs at another level: check its indentation"
    close = get_close_matches(key, sorted(known), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def content_hash(raw: bytes) -> str:
    """Identifies the exact file a card or sweep result came from."""
    return hashlib.sha256(raw).hexdigest()[:16]


def compile_valueset(path: FsPath, display: str) -> tuple[CompiledValueSet | None, list[RuleError]]:
    document, errors = read_document(path, display)
    if document is None:
        return None, errors
    problems = Problems(document)
    model: s.ValueSet | None = validate_model(s.ValueSet, problems)
    if model is None:
        return None, problems.errors
    exact, prefixes = compile_codes([(inc.system, inc.codes) for inc in model.include])
    for coding in sorted(exact | set(prefixes)):
        expected = canonical_unit((coding,))
        if expected is not None and expected != model.unit:
            said = f"says {model.unit}" if model.unit else "declares no unit"
            problems.at(
                ("unit",) if model.unit else ("include",),
                f"unit mismatch: {coding[0]} {coding[1]} is measured in {expected}, but this value set {said}",
            )
    first = model.include[0]
    preferred = canonical_coding(first.system, first.codes[0])
    valueset = CompiledValueSet(
        id=model.id,
        title=t.Text(model.title.da, model.title.en),
        unit=model.unit,
        exact=exact,
        prefixes=prefixes,
        preferred=preferred,
        sources=tuple(_source(src) for src in model.sources),
        file=display,
    )
    return (None if problems.errors else valueset), problems.errors


def _source(src: s.Source) -> t.SourceRef:
    return t.SourceRef(src.title, src.url, src.date, src.note)


def _text(text: s.Text | s.Reason) -> t.Text:
    return t.Text(text.da, text.en)


def compile_guideline(
    path: FsPath,
    display: str,
    valuesets: dict[str, CompiledValueSet],
    broken: frozenset[str] = frozenset(),
) -> tuple[GuidelineFile | None, list[RuleError]]:
    """``broken``: value sets whose own file has errors, reported there and not at each use."""
    document, errors = read_document(path, display)
    if document is None:
        return None, errors
    problems = Problems(document)
    model: s.Guideline | None = validate_model(s.Guideline, problems)
    if model is None:
        return None, problems.errors
    compiled = _GuidelineCompiler(model, problems, valuesets, broken).compile(
        content_hash(path.read_bytes())
    )
    if compiled is None or problems.errors:
        return None, problems.errors
    return GuidelineFile(compiled, tuple(model.tests), document), []


class _GuidelineCompiler:
    """Compiles one validated guideline model; all problems go to ``problems``."""

    def __init__(
        self,
        model: s.Guideline,
        problems: Problems,
        valuesets: dict[str, CompiledValueSet],
        broken: frozenset[str],
    ) -> None:
        self.model = model
        self.problems = problems
        self.valuesets = valuesets
        self.broken = broken
        self.scope: dict[str, ty.Type] = dict(BUILTINS)
        self.derived_refs: dict[str, set[str]] = {}
        self.register_refs: set[str] = set()

    def compile(self, digest: str) -> t.CompiledGuideline | None:
        m = self.model
        facts = self._facts()
        register = self._condition(("register", "when"), m.register_.when)
        self.register_refs = references(register) if register is not None else set()
        fact_scope = dict(self.scope)
        targets = self._targets(fact_scope)
        recommendations = tuple(
            r for i, rec in enumerate(m.recommendations) if (r := self._recommendation(i, rec))
        )
        indicators = tuple(
            ind for i, spec in enumerate(m.indicators) if (ind := self._indicator(i, spec))
        )
        self._check_unique("recommendations", [r.id for r in m.recommendations])
        self._check_unique("indicators", [i.id for i in m.indicators])
        self._check_cases(recommendations, indicators)
        if register is None or self.problems.errors:
            return None
        return t.CompiledGuideline(
            id=m.id,
            version=m.version,
            status=m.status,
            title=_text(m.title),
            publisher=_text(m.publisher)
            if isinstance(m.publisher, s.Text)
            else t.Text(m.publisher, m.publisher),
            description=_text(m.description),
            sources=tuple(_source(src) for src in m.sources),
            effective_from=m.effective.from_,
            effective_until=m.effective.until,
            register_description=_text(m.register_.description),
            register=register,
            facts=facts,
            targets=targets,
            recommendations=recommendations,
            indicators=indicators,
            file=self.problems.document.file,
            content_hash=digest,
            starts=instant(m.effective.from_),
            ends=None if m.effective.until is None else instant(m.effective.until),
        )

    # -- facts ----------------------------------------------------------------------------------

    def _facts(self) -> tuple[t.FactDef, ...]:
        specs = self.model.facts
        graph: dict[str, set[str]] = {}
        for name, fact in specs.items():
            kind, args = fact.primitive
            graph[name] = (names_in(args) & set(specs)) if kind == "expression" else set()
        try:
            order = list(TopologicalSorter(graph).static_order())
        except CycleError as exc:
            cycle = " -> ".join(exc.args[1])
            self.problems.at(
                ("facts", exc.args[1][0]), f"facts depend on each other in a circle: {cycle}"
            )
            return ()
        compiled = []
        for name in order:
            fact = self._fact(name, specs[name])
            if fact is not None:
                compiled.append(fact)
            self.scope[name] = ty.UNUSABLE if fact is None else fact.type
        return tuple(compiled)

    def _fact(self, name: str, fact: s.Fact) -> t.FactDef | None:
        kind, args = fact.primitive
        path: Path = ("facts", name, kind)
        if kind == "expression":
            expr = self.problems.expression(path, args, lambda x: parse(x, self.scope))
            if expr is None:
                return None
            if isinstance(expr.type, ty.Record):  # the population engine has columns, not records
                whole = expr.name if isinstance(expr, t.Ref) else args.strip()
                fields = ", ".join(f"{whole}.{n}" for n, _ in expr.type.fields)
                self.problems.at(
                    path,
                    f"an expression fact gives a value, not a whole {expr.type.name}: "
                    f"use '{whole}' itself, or one of its fields ({fields})",
                )  # the fact stays in scope: its uses are not reported as unknown names
            self.derived_refs[name] = references(expr)
            return t.FactDef(name, t.Derived(expr), expr.type)
        valueset = self._valueset((*path, "valueset"), args.valueset)
        if valueset is None:
            return None
        vs = args.valueset
        if kind in ("latest_observation", "earliest_observation"):
            which = kind.removesuffix("_observation")
            primitive: t.Primitive = t.ObservationFact(which, vs, _period(args.within))
            return t.FactDef(name, primitive, ty.observation(valueset.unit))
        if kind == "count_observations":
            return t.FactDef(name, t.ObservationFact("count", vs, _period(args.within)), ty.NUMBER)
        if kind == "active_medication":
            return t.FactDef(name, t.ActiveMedication(vs), ty.BOOL)
        if kind == "continuous_use":
            primitive = t.ContinuousUse(vs, _period(args.longer_than), args.max_gap_days)
            return t.FactDef(name, primitive, ty.BOOL)
        if kind == "medication_started":
            return t.FactDef(
                name, t.MedicationStarted(vs, _period(args.within), args.max_gap_days), ty.BOOL
            )
        if kind == "condition_present":
            return t.FactDef(name, t.ConditionPresent(vs, args.include_resolved), ty.BOOL)
        if kind == "condition_onset":
            return t.FactDef(name, t.ConditionOnset(vs), ty.DATE)
        if kind == "patient_goal":
            value_type: ty.Type = ty.Quantity(valueset.unit) if valueset.unit else ty.NUMBER
            return t.FactDef(name, t.PatientGoal(vs), value_type)
        raise AssertionError(f"primitive {kind} has no compiler")

    def _valueset(self, path: Path, valueset_id: str) -> CompiledValueSet | None:
        valueset = self.valuesets.get(valueset_id)
        if valueset is None and valueset_id not in self.broken:
            known = ", ".join(sorted(self.valuesets)) or "none loaded"
            hint = get_close_matches(valueset_id, self.valuesets, n=1)
            meant = f"; did you mean '{hint[0]}'?" if hint else ""
            self.problems.at(path, f"unknown value set '{valueset_id}'{meant} (known: {known})")
        return valueset

    def _orderable(self, path: Path, valueset_id: str) -> None:
        """A suggestion becomes a ServiceRequest for the value set's first code: a test or a
        procedure. A drug class (ATC C09) or a diagnosis there would be an order no one can
        carry out, so it is refused where it is written."""
        valueset = self._valueset(path, valueset_id)
        if valueset is None:
            return
        system, code = valueset.preferred
        kind = _NOT_ORDERABLE.get(system)
        if kind is not None:
            self.problems.at(
                path,
                f"'{valueset_id}' begins with {system} {code}, {kind}: a suggestion orders a test "
                f"or procedure (a FHIR ServiceRequest for the value set's first code), never "
                f"{kind}; name it in the label or detail and leave out 'order', or order a value "
                f"set whose first code is a test (npu, loinc, snomed)",
            )

    # -- targets ----------------------------------------------------------------------------------

    def _targets(self, fact_scope: dict[str, ty.Type]) -> tuple[t.TargetDef, ...]:
        compiled = []
        for name, spec in self.model.targets.items():
            if name in self.model.facts:
                self.problems.at(("targets", name), f"'{name}' is already the name of a fact")
                continue
            target = self._target(name, spec, fact_scope)
            if target is not None:
                compiled.append(target)
            self.scope[name] = ty.UNUSABLE if target is None else target.type
        return tuple(compiled)

    def _target(
        self, name: str, spec: s.Target, fact_scope: dict[str, ty.Type]
    ) -> t.TargetDef | None:
        valueset = self._valueset(("targets", name, "measure"), spec.measure)
        if valueset is None:
            return None
        cases = []
        for index, case in enumerate(spec.cases):
            path = ("targets", name, "cases", index, "when")
            when = self.problems.expression(
                path, case.when, lambda x: parse_condition(x, fact_scope)
            )
            cases.append(t.TargetCase(when, case.value, _text(case.reason)))
        cases.append(t.TargetCase(None, spec.default.value, _text(spec.default.reason)))
        # A shared target's reason may come from another guideline: size for the longest allowed.
        reason_width = max(s.REASON_LENGTH, len(t.GOAL_REASON.da), len(t.GOAL_REASON.en))
        return t.TargetDef(
            name,
            spec.measure,
            valueset.unit,
            spec.precedence,
            tuple(cases),
            ty.target(valueset.unit, reason_width),
        )

    # -- recommendations and indicators -----------------------------------------------------------

    def _condition(self, path: Path, text: str) -> t.Expr | None:
        return self.problems.expression(path, text, lambda x: parse_condition(x, self.scope))

    def _recommendation(self, index: int, rec: s.Recommendation) -> t.RecommendationDef | None:
        base: Path = ("recommendations", index)
        when = self._condition((*base, "when"), rec.when)
        summary = self._templates((*base, "summary"), rec.summary, limit=SUMMARY_LIMIT)
        detail = self._templates((*base, "detail"), rec.detail) if rec.detail else None
        suggestion = None
        if rec.suggestion is not None:
            if rec.suggestion.order is not None:
                self._orderable((*base, "suggestion", "order"), rec.suggestion.order)
            suggestion = t.SuggestionDef(_text(rec.suggestion.label), rec.suggestion.order)
        if when is None or summary is None or (rec.detail and detail is None):
            return None
        used = (
            references(when)
            | self.register_refs
            | _template_refs(summary)
            | (_template_refs(detail) if detail else set())
        )
        evidence = tuple(sorted(self._expand(used) - set(BUILTINS)))
        return t.RecommendationDef(
            rec.id, when, rec.indicator, summary, detail, suggestion, evidence, rec.group
        )

    def _expand(self, names: set[str]) -> set[str]:
        """Names plus everything the derived facts among them are built from."""
        result = set(names)
        pending = list(names)
        while pending:
            for ref in self.derived_refs.get(pending.pop(), ()):
                if ref not in result:
                    result.add(ref)
                    pending.append(ref)
        return result

    def _templates(self, path: Path, text: s.Text, limit: int | None = None) -> t.Templates | None:
        da = self._template((*path, "da"), text.da, limit)
        en = self._template((*path, "en"), text.en, limit)
        return t.Templates(da, en) if da is not None and en is not None else None

    def _template(self, path: Path, text: str, limit: int | None) -> t.Template | None:
        try:
            pieces = split_template(text)
        except ExpressionError as exc:
            self.problems.at(path, exc.message, exc.column - 1)
            return None
        parts: list[str | t.Expr] = []
        ok = True
        for piece, offset in pieces:
            if offset is None:
                parts.append(piece)
                continue
            expr = self.problems.expression(path, piece, lambda x: parse(x, self.scope), offset)
            if expr is None:
                ok = False
            elif isinstance(expr.type, ty.Record) and not is_observation(expr.type):
                self.problems.at(path, f"show a field, e.g. {{{piece.strip()}.value}}", offset)
                ok = False
            else:
                parts.append(expr)
        if not ok:
            return None
        template = t.Template(tuple(parts))
        if limit is not None:
            self._check_width(path, template, limit)
        return template

    def _check_width(self, path: Path, template: t.Template, limit: int) -> None:
        total = 0
        for part in template.parts:
            if isinstance(part, str):
                total += len(part)
                continue
            part_width = width(part.type)
            if part_width is None:
                self.problems.at(
                    path, "the summary can exceed 140 characters: a value in it has no length limit"
                )
                return
            total += part_width
        if total >= limit:
            self.problems.at(
                path,
                f"the summary can exceed 140 characters (up to {total} with the longest values); "
                "shorten it or move details to 'detail'",
            )

    def _indicator(self, index: int, spec: s.Indicator) -> t.IndicatorDef | None:
        base: Path = ("indicators", index)
        numerator = self._condition((*base, "numerator"), spec.numerator)
        denominator = (
            self._condition((*base, "denominator"), spec.denominator) if spec.denominator else None
        )
        exceptions = (
            self._condition((*base, "exceptions"), spec.exceptions) if spec.exceptions else None
        )
        if numerator is None:
            return None
        return t.IndicatorDef(spec.id, _text(spec.title), numerator, denominator, exceptions)

    def _check_unique(self, section: str, ids: list[str]) -> None:
        seen: set[str] = set()
        for index, ident in enumerate(ids):
            if ident in seen:
                self.problems.at((section, index, "id"), f"'{ident}' is used twice in {section}")
            seen.add(ident)

    def _check_cases(
        self,
        recommendations: tuple[t.RecommendationDef, ...],
        indicators: tuple[t.IndicatorDef, ...],
    ) -> None:
        """Expectations may only name things the guideline defines (a typo must not pass)."""
        known = {
            "recommendations": {r.id for r in self.model.recommendations},
            "targets": set(self.model.targets),
            "target_reasons": set(self.model.targets),
            "targets_set_by": set(self.model.targets),
            "indicators": {i.id for i in self.model.indicators},
            "facts": set(self.model.facts) | set(BUILTINS),
        }
        self._check_case_names()
        for index, case in enumerate(self.model.tests):
            expect = case.expect
            for section, names in known.items():
                given = getattr(expect, section)
                items = given if isinstance(given, list) else list(given or {})
                for name in items:
                    if name not in names:
                        self.problems.at(
                            ("tests", index, "expect", section),
                            f"test '{case.name}' expects unknown {section.rstrip('s')} '{name}'",
                        )

    def _check_case_names(self) -> None:
        """A case copied and not renamed: the names are the rule's specification in words, and
        a failure or a reviewer names a case by its name."""
        first: dict[str, int] = {}
        for index, case in enumerate(self.model.tests):
            earlier = first.setdefault(case.name, index)
            if earlier != index:
                where = self.problems.document.position(("tests", earlier, "name"))
                line = f" (line {where.line})" if where else ""
                self.problems.at(
                    ("tests", index, "name"),
                    f"another test case is named '{case.name}'{line}; give each case its own name",
                )


def split_template(text: str) -> list[tuple[str, int | None]]:
    """Split 'HbA1c {hba1c.value}' into literal text and expressions ({{ and }} are braces).

    Returns (piece, offset) pairs; offset is None for literal text, else where the expression
    starts in ``text``.
    """
    pieces: list[tuple[str, int | None]] = []
    literal: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if text.startswith("{{", index) or text.startswith("}}", index):
            literal.append(char)
            index += 2
        elif char == "{":
            end = text.find("}", index)
            if end < 0:
                raise ExpressionError("a '{' is never closed with '}'", index + 1)
            if literal:
                pieces.append(("".join(literal), None))
                literal = []
            pieces.append((text[index + 1 : end], index + 1))
            index = end + 1
        elif char == "}":
            raise ExpressionError("a '}' without its '{' (write }} for a brace)", index + 1)
        else:
            literal.append(char)
            index += 1
    if literal:
        pieces.append(("".join(literal), None))
    return pieces


def _template_refs(templates: t.Templates) -> set[str]:
    found: set[str] = set()
    for template in (templates.da, templates.en):
        for part in template.parts:
            if not isinstance(part, str):
                found |= references(part)
    return found


def _period(text: str) -> t.Period:
    amount, unit = s.parse_duration(text)
    return t.Period(amount, unit)
