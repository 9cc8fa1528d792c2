"""Every author error names file, line and column, and says what is wrong in plain words."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from engine.cases import run_cases
from rules.errors import RuleFileError
from rules.guideline_set import load_guidelines


def errors_after(guideline_dir: Path, old: str, new: str, file: str = "example.yaml") -> list[str]:
    path = guideline_dir / file
    text = path.read_text(encoding="utf-8")
    assert old in text, f"fixture no longer contains {old!r}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(RuleFileError) as caught:
        load_guidelines(guideline_dir)
    return [str(e) for e in caught.value.errors]


def line_of(guideline_dir: Path, needle: str, file: str = "example.yaml") -> int:
    lines = (guideline_dir / file).read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, 1) if needle in line)


def test_the_fixture_set_loads(guideline_dir: Path) -> None:
    guidelines = load_guidelines(guideline_dir)
    assert [g.id for g in guidelines.guidelines] == ["example-hba1c"]
    assert set(guidelines.valuesets) >= {"hba1c", "t2d", "ihd", "egfr"}


def test_typo_in_a_fact_name(guideline_dir: Path) -> None:
    errors = errors_after(guideline_dir, "when: t2d and age >= 18", "when: t2 and age >= 18")
    line = line_of(guideline_dir, "when: t2 and age")
    assert len(errors) == 1
    assert f"example.yaml:{line}:9: unknown fact 't2'" in errors[0]


def test_unknown_primitive_suggests_the_right_one(guideline_dir: Path) -> None:
    errors = errors_after(
        guideline_dir, "hba1c: {latest_observation:", "hba1c: {latest_observaton:"
    )
    assert any("did you mean 'latest_observation'" in e for e in errors)
    assert any(f":{line_of(guideline_dir, 'latest_observaton')}:" in e for e in errors)


def test_unknown_value_set(guideline_dir: Path) -> None:
    errors = errors_after(guideline_dir, "{valueset: ihd}", "{valueset: ihdd}")
    assert any("unknown value set 'ihdd'" in e for e in errors)


def test_unit_mismatch_in_an_expression(guideline_dir: Path) -> None:
    errors = errors_after(guideline_dir, "58 'mmol/mol'", "7.5 '%'")
    assert any("unit mismatch: cannot compare mmol/mol with %" in e for e in errors)


def test_missing_source(guideline_dir: Path) -> None:
    errors = errors_after(
        guideline_dir,
        '  - {title: "DSAM type 2-diabetes", url: "https://vejledninger.dsam.dk/type2/", date: 2019-01-01}\n',
        "  []\n",
    )
    assert any("sources" in e for e in errors)


def test_summary_that_can_exceed_140_characters(guideline_dir: Path) -> None:
    errors = errors_after(
        guideline_dir,
        'en: "HbA1c {hba1c.value} ({hba1c.date}) is above',
        'en: "HbA1c {hba1c.resource} {hba1c.resource} ({hba1c.date}) is above',
    )
    assert any("can exceed 140 characters" in e for e in errors)


def test_an_observation_may_be_shown_whole(guideline_dir: Path) -> None:
    text = (guideline_dir / "example.yaml").read_text(encoding="utf-8")
    (guideline_dir / "example.yaml").write_text(
        text.replace("HbA1c {hba1c.value} ({hba1c.date})", "HbA1c {hba1c}"), encoding="utf-8"
    )
    (guideline,) = load_guidelines(guideline_dir).guidelines
    summary = next(r for r in guideline.recommendations if r.id == "above-target").summary
    assert [type(p).__name__ for p in summary.da.parts][:2] == ["str", "Ref"]


def test_a_target_is_shown_by_a_field(guideline_dir: Path) -> None:
    errors = errors_after(
        guideline_dir, "er over målet {hba1c_target.value}", "er over målet {hba1c_target}"
    )
    assert any("show a field, e.g. {hba1c_target.value}" in e for e in errors)


def test_a_whole_observation_counts_its_date_in_the_140_characters(guideline_dir: Path) -> None:
    """Four eGFR inserts fit as values (4 x 26 characters) but not with their dates (4 x 39)."""
    summary = (
        'summary: {da: "Metformin ved eGFR {egfr.value}", en: "Metformin with eGFR {egfr.value}"}'
    )
    values = " ".join(["{egfr.value}"] * 4)
    whole = " ".join(["{egfr}"] * 4)
    fits = f'summary: {{da: "eGFR {values}", en: "eGFR {values}"}}'
    text = (guideline_dir / "example.yaml").read_text(encoding="utf-8")
    (guideline_dir / "example.yaml").write_text(text.replace(summary, fits), encoding="utf-8")
    load_guidelines(guideline_dir)
    errors = errors_after(guideline_dir, fits, fits.replace(values, whole))
    assert any("can exceed 140 characters (up to 164" in e for e in errors)


def test_unknown_key_is_an_error(guideline_dir: Path) -> None:
    errors = errors_after(
        guideline_dir, "indicator: critical", "indicator: critical\n    colour: red"
    )
    assert any("unknown key 'colour'" in e for e in errors)


def test_a_known_key_at_the_wrong_level_is_placed_at_the_key(guideline_dir: Path) -> None:
    """A test's 'facts' indented one level too far out was 'unknown key' at the value."""
    errors = errors_after(guideline_dir, "      facts: {hba1c: 67}", "    facts: {hba1c: 67}")
    line = line_of(guideline_dir, "    facts: {hba1c: 67}")
    assert errors == [
        f"{guideline_dir / 'example.yaml'}:{line}:5: unknown key 'facts' here; 'facts' "
        "belongs at another level: check its indentation"
    ]


def test_a_misspelt_key_is_named_with_the_key_meant(guideline_dir: Path) -> None:
    errors = errors_after(guideline_dir, "publisher: Vejviser", "publsher: Vejviser")
    assert any("unknown key 'publsher'; did you mean 'publisher'?" in e for e in errors)


def test_expectation_naming_an_unknown_recommendation(guideline_dir: Path) -> None:
    errors = errors_after(
        guideline_dir, "recommendations: [above-target]", "recommendations: [above-targt]"
    )
    assert any("unknown recommendation 'above-targt'" in e for e in errors)


def test_facts_that_depend_on_each_other_in_a_circle(guideline_dir: Path) -> None:
    errors = errors_after(
        guideline_dir,
        'frail: {expression: "age >= 85"}',
        'frail: {expression: "frail2"}\n  frail2: {expression: "frail"}',
    )
    assert any("in a circle" in e for e in errors)


def test_value_set_unit_must_match_the_analyte(guideline_dir: Path) -> None:
    errors = errors_after(guideline_dir, "unit: mmol/mol", "unit: '%'", file="valuesets/hba1c.yaml")
    assert any("unit mismatch" in e and "valuesets/hba1c.yaml" in e for e in errors)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "targets:\n  hba1c_target:",
            "targets:\n  frail:",
            "'frail' is already the name of a fact",
        ),
        ("  - id: missing\n", "  - id: above-target\n", "'above-target' is used twice"),
        (
            'is above the target {hba1c_target.value}"',
            'is above the target {hba1c_target.value"',
            "a '{' is never closed with '}'",
        ),
        (
            "is above the target {hba1c_target.value}",
            "is above the target } {hba1c_target.value}",
            "a '}' without its '{' (write }} for a brace)",
        ),
        (
            'frail: {expression: "age >= 85"}',
            'frail: {expression: "age >= 85 and -t2d"}',
            "cannot negate a",
        ),
        (
            'frail: {expression: "age >= 85"}',
            'frail: {expression: "age >= 85 and exists()"}',
            "exists() takes 1 argument(s)",
        ),
        ("register:\n  description:", "register:\n  descr:", "'description' is required here"),
        ("as_of: 2026-06-01", "as_of: 2026-13-01", "'2026-13-01' is not a valid date (month"),
        (
            "within: 12 months}}",
            "within: 12 måneder}}",
            "'12 måneder' is not a valid within (write '12 months')",
        ),
        (
            "within: 12 months}}",
            "within: 12 mdr}}",
            "'12 mdr' is not a valid within (write '12 months')",
        ),
        ("within: 12 months}}", "within: 2år}}", "'2år' is not a valid within (write '2 years')"),
        (
            "within: 12 months}}",
            "within: 12 fortnights}}",
            "'12 fortnights' is not a valid within (write a number and days, weeks, months or "
            "years, in English: '14 days')",
        ),
        (
            "publisher: Vejviser tests",
            "publisher: !!python/object/apply:os.system [id]",
            "the tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed",
        ),
    ],
    ids=[
        "target named as a fact",
        "id twice",
        "open brace",
        "lone brace",
        "negate a truth",
        "argument count",
        "required key",
        "impossible date",
        "window not in English",
        "window abbreviated in Danish",
        "window without a space",
        "window in an unknown unit",
        "python tag",
    ],
)
def test_more_author_errors_say_where_and_what(
    guideline_dir: Path, old: str, new: str, message: str
) -> None:
    errors = errors_after(guideline_dir, old, new)
    assert any(message in e and "example.yaml:" in e for e in errors), errors


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            'frail: {expression: "age >= 85"}',
            'frail: {expression: "age >= 85 and"}',
            "the expression ends too early",
        ),
        (
            "{valueset: hba1c, within: 12 months}}\n  first",
            "{valueset: hba1cc, within: 12 months}}\n  first",
            "unknown value set 'hba1cc'",
        ),
        ("    measure: hba1c\n", "    measure: hba1cc\n", "unknown value set 'hba1cc'"),
    ],
    ids=["fact expression", "fact value set", "target measure"],
)
def test_one_mistake_one_message(guideline_dir: Path, old: str, new: str, message: str) -> None:
    """A fact or target whose definition is wrong is reported there, not again at each use
    (frail is used by a target case and an indicator; hba1c by targets, recommendations,
    indicators and texts; the target by a recommendation and its texts)."""
    errors = errors_after(guideline_dir, old, new)
    assert len(errors) == 1 and message in errors[0], errors


def test_a_file_saved_in_latin1_is_named_with_the_place(guideline_dir: Path) -> None:
    path = guideline_dir / "example.yaml"
    path.write_bytes(path.read_bytes().replace("skrøbelig".encode(), "skrøbelig".encode("latin-1")))
    lines = path.read_bytes().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if b"\xf8" in text)
    column = len(lines[line - 1][: lines[line - 1].index(b"\xf8")].decode()) + 1
    with pytest.raises(RuleFileError) as caught:
        load_guidelines(guideline_dir)
    assert [str(e) for e in caught.value.errors] == [
        f"{path}:{line}:{column}: the file is not UTF-8 (byte 0xf8 here); save it as UTF-8"
    ]


def test_invalid_yaml(guideline_dir: Path) -> None:
    errors = errors_after(guideline_dir, "register:\n", "register: [\n")
    assert any("not valid YAML" in e for e in errors)


def test_all_errors_are_reported_at_once(guideline_dir: Path) -> None:
    path = guideline_dir / "example.yaml"
    text = path.read_text(encoding="utf-8").replace("when: t2d and", "when: t2dd and")
    path.write_text(text.replace("{valueset: ihd}", "{valueset: nope}"), encoding="utf-8")
    with pytest.raises(RuleFileError) as caught:
        load_guidelines(guideline_dir)
    assert len(caught.value.errors) >= 2


def test_misspelt_code_system(guideline_dir: Path) -> None:
    errors = errors_after(guideline_dir, "system: icpc2", "system: icpc", file="valuesets/t2d.yaml")
    assert any("unknown code system 'icpc'; did you mean 'icpc2'?" in e for e in errors)


def test_measured_codes_need_the_value_set_unit(guideline_dir: Path) -> None:
    errors = errors_after(guideline_dir, "unit: mmol/mol\n", "", file="valuesets/hba1c.yaml")
    assert any("is measured in mmol/mol, but this value set declares no unit" in e for e in errors)


def test_test_case_value_must_be_a_number_or_bound(guideline_dir: Path) -> None:
    errors = errors_after(guideline_dir, "value: 67, unit", "value: positive, unit")
    assert any("value" in e for e in errors)


def test_draft_guidelines_run_their_test_cases(guideline_dir: Path) -> None:
    path = guideline_dir / "example.yaml"
    path.write_text(path.read_text().replace("version: 1.0.0", "version: 1.0.0\nstatus: draft"))
    guidelines = load_guidelines(guideline_dir)
    assert guidelines.in_force(dt.date(2026, 6, 1)) == ()
    assert all(r.passed for r in run_cases(guidelines))


def test_versions_in_force_at_the_same_time_are_rejected(guideline_dir: Path) -> None:
    text = (guideline_dir / "example.yaml").read_text()
    (guideline_dir / "example-1.1.yaml").write_text(
        text.replace("version: 1.0.0", "version: 1.1.0").replace(
            "from: 2020-01-01", "from: 2026-01-01"
        )
    )
    with pytest.raises(RuleFileError) as caught:
        load_guidelines(guideline_dir)
    assert "both in force from 2026-01-01" in str(caught.value)
    path = guideline_dir / "example.yaml"
    path.write_text(
        text.replace(
            "effective: {from: 2020-01-01}", "effective: {from: 2020-01-01, until: 2026-01-01}"
        )
    )
    assert len(load_guidelines(guideline_dir).guidelines) == 2


def test_misspelt_fact_name_gets_a_suggestion(guideline_dir: Path) -> None:
    errors = errors_after(guideline_dir, "when: t2d and age >= 18", "when: t2e and age >= 18")
    assert any("unknown fact 't2e'; did you mean 't2d'?" in e for e in errors)


def test_test_case_codes_need_a_known_system(guideline_dir: Path) -> None:
    errors = errors_after(
        guideline_dir, 'conditions: [{code: "icpc2:T90"', 'conditions: [{code: "icpc:T90"'
    )
    assert any("did you mean 'icpc2:T90'?" in e for e in errors)


def test_a_test_case_code_error_is_one_plain_message(guideline_dir: Path) -> None:
    """Not pydantic's names for the union it tried (function-after[_known_code(), str]), nor a
    second, false 'should be a valid list' for the list form the author did not write."""
    errors = errors_after(
        guideline_dir, 'conditions: [{code: "icpc2:T90"', 'conditions: [{code: "icpc:T90"'
    )
    line = line_of(guideline_dir, "icpc:T90")
    (error,) = errors
    assert error.endswith(
        f"example.yaml:{line}:28: code: 'icpc:T90' is not 'system:code' with a known system; "
        "did you mean 'icpc2:T90'?"
    )


@pytest.mark.parametrize(
    ("old", "new", "file", "message"),
    [
        ("version: 1.0.0", "version: 1.0", "example.yaml", "version: YAML reads this as a number"),
        (
            "en: Example HbA1c}",
            "en: No}",
            "example.yaml",
            "en: YAML reads this as true or false (False), not as text; put it in quotes",
        ),
        (
            "codes: [K74, K75, K76]",
            "codes: [K74, 0123, K76]",
            "valuesets/ihd.yaml",
            "codes[1]: YAML reads this as a number (83), not as text; put it in quotes",
        ),
    ],
    ids=["version", "yes-no word", "code of digits"],
)
def test_yaml_that_is_no_text_is_told_to_be_quoted(
    guideline_dir: Path, old: str, new: str, file: str, message: str
) -> None:
    errors = errors_after(guideline_dir, old, new, file)
    line = line_of(guideline_dir, new, file)
    assert len(errors) == 1 and f"{file}:{line}:" in errors[0] and message in errors[0], errors


def test_a_value_set_defined_twice_is_one_error(guideline_dir: Path) -> None:
    """Either file may be the one meant, so neither is used, and the uses say nothing more: the
    later file (here diagnoses without a unit) used to replace the first, so every comparison of
    HbA1c with mmol/mol was reported as well."""
    diagnoses = (guideline_dir / "valuesets" / "ihd.yaml").read_text(encoding="utf-8")
    (guideline_dir / "valuesets" / "hba1c_copy.yaml").write_text(
        diagnoses.replace("id: ihd", "id: hba1c"), encoding="utf-8"
    )
    with pytest.raises(RuleFileError) as caught:
        load_guidelines(guideline_dir)
    (error,) = [str(e) for e in caught.value.errors]
    assert error.endswith(
        "valuesets/hba1c_copy.yaml: value set 'hba1c' is also defined in "
        f"{guideline_dir / 'valuesets' / 'hba1c.yaml'}"
    ), error


def test_test_case_value_words(guideline_dir: Path) -> None:
    errors = errors_after(guideline_dir, "value: 67, unit", "value: positive, unit")
    assert any("'positive' is neither a number nor a bound such as '>90'" in e for e in errors)


def test_target_reasons_are_short(guideline_dir: Path) -> None:
    errors = errors_after(guideline_dir, "en: frail elderly}", "en: " + "x" * 51 + "}")
    assert any("reason" in e and "50" in e for e in errors)


@pytest.mark.parametrize(
    ("expression", "whole"), [("egfr", "egfr"), ("(first_hba1c)", "first_hba1c")]
)
def test_an_expression_fact_is_a_value_not_a_whole_observation(
    guideline_dir: Path, expression: str, whole: str
) -> None:
    """A sweep has the fields of an observation as columns, not the record: such a fact loaded
    and then stopped every sweep with a TypeError. Its uses are not reported as unknown names."""
    summary = "summary: {da: Ingen HbA1c i 12 måneder, en: No HbA1c in 12 months}"
    path = guideline_dir / "example.yaml"
    text = path.read_text(encoding="utf-8")
    assert summary in text
    path.write_text(
        text.replace(
            summary, 'summary: {da: "Nyre: {kidney.value}", en: "Kidney: {kidney.value}"}'
        ),
        encoding="utf-8",
    )
    errors = errors_after(
        guideline_dir,
        '  frail: {expression: "age >= 85"}\n',
        f'  frail: {{expression: "age >= 85"}}\n  kidney: {{expression: "{expression}"}}\n',
    )
    line = line_of(guideline_dir, "kidney: {expression")
    fields = ", ".join(f"{whole}.{field}" for field in ("value", "date", "resource"))
    assert len(errors) == 1
    assert errors[0].endswith(
        f"example.yaml:{line}:25: an expression fact gives a value, not a whole observation: "
        f"use '{whole}' itself, or one of its fields ({fields})"
    )


@pytest.mark.parametrize(
    ("file", "old", "new", "message"),
    [
        (
            "example.yaml",
            "58 'mmol/mol'",
            "58 'mmol/MOL'",
            "cannot compare mmol/mol with mmol/MOL; UCUM units are case-sensitive",
        ),
        (
            "example.yaml",
            "when: on_metformin and egfr.value",
            "when: egfr and egfr.value",
            "but got an observation (write exists(egfr))",
        ),
        (
            "example.yaml",
            "register:\n  description",
            "register:\n\tdescription",
            "it is a tab: YAML indents with spaces only",
        ),
        ("valuesets/ihd.yaml", "system: icd10", "system: ICD10", "did you mean 'icd10'?"),
        (
            "valuesets/ihd.yaml",
            "system: icd10",
            "system: http://hl7.org/fhir/sid/icd-10/",
            "did you mean 'http://hl7.org/fhir/sid/icd-10'?",
        ),
        ("example.yaml", "{valueset: ihd}", "{valueset: ihdd}", "did you mean 'ihd'?"),
        (
            "example.yaml",
            'conditions: [{code: "icpc2:T90"',
            'conditions: [{code: "ICPC2:T90"',
            "did you mean 'icpc2:T90'?",
        ),
    ],
    ids=["unit case", "an observation", "tab", "system case", "uri slash", "value set", "code key"],
)
def test_near_misses_are_named_with_what_was_meant(
    guideline_dir: Path, file: str, old: str, new: str, message: str
) -> None:
    """Each used to be a bare 'unknown', 'cannot start any token' or 'not a observation', or
    (the URI with a slash) loaded and matched nothing."""
    errors = errors_after(guideline_dir, old, new, file)
    assert len(errors) == 1 and message in errors[0] and f"{file}:" in errors[0], errors


def test_two_test_cases_with_one_name_are_an_error(guideline_dir: Path) -> None:
    """A case copied and not renamed passed: two specifications under one name."""
    path = guideline_dir / "example.yaml"
    text = path.read_text(encoding="utf-8")
    case = text[text.index("  - name: above the default target") :]
    path.write_text(text + case, encoding="utf-8")
    with pytest.raises(RuleFileError) as caught:
        load_guidelines(guideline_dir)
    first = line_of(guideline_dir, "  - name: above the default target")
    second = first + case.count("\n")
    assert [str(e) for e in caught.value.errors] == [
        f"{path}:{second}:11: another test case is named 'above the default target' "
        f"(line {first}); give each case its own name"
    ]


@pytest.mark.parametrize(
    ("valueset", "said"),
    [
        ("metformin", "'metformin' begins with atc A10BA02, a medicine"),
        ("t2d-icd", "'t2d-icd' begins with icd10 E11, a diagnosis"),
    ],
)
def test_a_suggestion_cannot_order_a_medicine_or_a_diagnosis(
    guideline_dir: Path, valueset: str, said: str
) -> None:
    """'order: ras-agents' loaded and the card offered a ServiceRequest for ATC C09."""
    (guideline_dir / "valuesets" / "t2d-icd.yaml").write_text(
        "id: t2d-icd\ntitle: {da: T2D, en: T2D}\nsources:\n"
        '  - {title: "ICD-10", url: "https://icd.who.int", date: 2019-01-01}\n'
        "include:\n  - {system: icd10, codes: [E11]}\n",
        encoding="utf-8",
    )
    errors = errors_after(guideline_dir, "order: hba1c", f"order: {valueset}")
    line = line_of(guideline_dir, f"order: {valueset}")
    (found,) = errors
    assert f"example.yaml:{line}:14: {said}" in found
    assert "a suggestion orders a test or procedure" in found


@pytest.mark.parametrize(
    ("old", "new", "meant"),
    [
        ("indicator: critical", "indicator: crit", "did you mean 'critical'?"),
        ("sex: female", "sex: kvinde", "did you mean 'female'?"),
    ],
)
def test_a_value_out_of_a_short_list_names_the_one_meant(
    guideline_dir: Path, old: str, new: str, meant: str
) -> None:
    """A test patient's 'sex: kvinde' listed the four codes without saying which was meant."""
    errors = errors_after(guideline_dir, old, new)
    assert any(e.endswith(meant) for e in errors), errors
