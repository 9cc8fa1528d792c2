"""The vejviser command as an author and a GP use it: exit codes, file:line messages, outputs."""

from __future__ import annotations

import datetime as dt
import fcntl
import gzip
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.cases import case_resources
from engine.population.sql import GuidelineSql
from engine.population.store import write_store
from engine.population.tables import facts_tables
from fhir_adapter.normalise import normalise_patient
from rules.guideline_set import load_guidelines
from rules.schema import CasePatient
from service.cds_hooks.discovery import prefetch_templates
from service.cli import _cluster_warnings, app
from service.feedback import FeedbackStore
from service.settings import CONFIG_ENV

runner = CliRunner()
BUNDLE = Path(__file__).parent / "fixtures" / "ihd-patient.json"


def test_check_passes_on_a_good_set(guideline_dir: Path) -> None:
    result = runner.invoke(app, ["guidelines", "check", str(guideline_dir)])
    assert result.exit_code == 0, result.output
    assert "1 test case(s): all passed." in result.output


def test_check_reports_a_typo_with_file_and_line(guideline_dir: Path) -> None:
    path = guideline_dir / "example.yaml"
    path.write_text(path.read_text().replace("when: t2d and age", "when: t2dd and age"))
    result = runner.invoke(app, ["guidelines", "check", str(guideline_dir)])
    assert result.exit_code == 1
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "t2dd" in text)
    assert f"example.yaml:{line}:9: unknown fact 't2dd'" in result.output


def test_check_fails_when_a_test_case_fails(guideline_dir: Path) -> None:
    path = guideline_dir / "example.yaml"
    path.write_text(path.read_text().replace("facts: {hba1c: 67}", "facts: {hba1c: 66}"))
    result = runner.invoke(app, ["guidelines", "check", str(guideline_dir)])
    assert result.exit_code == 1
    assert (
        "expected fact hba1c = 66, got 67 (2026-03-02, Observation/observation-1)" in result.output
    )
    assert "1 failed." in result.output


def test_check_passes_on_windows_that_reach_before_year_1(guideline_dir: Path) -> None:
    """'within: 3000 years' means ever: every date is inside, in both engines and in discovery,
    where such a window used to stop every call with 'year -974 is out of range'."""
    path = guideline_dir / "example.yaml"
    text = path.read_text()
    for old, new in [
        ("valueset: hba1c, within: 12 months}", "valueset: hba1c, within: 3000 years}"),
        ("within: 15 months", "within: 99999999999999999999 days"),
        ("longer_than: 28 days", "longer_than: 3000 years"),
        ("within: 90 days", "within: 1000000 days"),
        ("date: 2026-03-02}", "date: 1901-03-02}"),
        ("got 67 (2026-03-02", "got 67 (1901-03-02"),
    ]:
        text = text.replace(old, new)
    path.write_text(text)
    result = runner.invoke(app, ["guidelines", "check", str(guideline_dir)])
    assert result.exit_code == 0, result.output
    assert "1 test case(s): all passed." in result.output
    assert "cannot be swept" not in result.output
    templates = prefetch_templates(load_guidelines(guideline_dir), dt.date(2026, 6, 1), 2000)
    assert "&date=ge0001-01-01" in templates["observations1"]


def test_serve_refuses_to_start_on_a_set_whose_test_case_fails(
    guideline_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same failure keeps the service from starting: it never serves a set that fails."""
    started: list[object] = []
    # serve opens its feedback database before it starts: not in the working directory
    monkeypatch.setenv("VEJVISER_FEEDBACK_DATABASE", str(guideline_dir.parent / "feedback.sqlite"))
    monkeypatch.setattr("uvicorn.run", lambda application, **_: started.append(application))
    # serve installs the JSON log handler for the process; not for the rest of the test run
    monkeypatch.setattr("service.guideline_source.configure_logging", lambda: None)
    path = guideline_dir / "example.yaml"
    path.write_text(path.read_text().replace("facts: {hba1c: 67}", "facts: {hba1c: 66}"))
    result = runner.invoke(app, ["serve", "--no-auth", "--guidelines", str(guideline_dir)])
    assert result.exit_code == 1
    assert "expected fact hba1c = 66, got 67" in result.output
    assert started == []
    path.write_text(path.read_text().replace("facts: {hba1c: 66}", "facts: {hba1c: 67}"))
    result = runner.invoke(app, ["serve", "--no-auth", "--guidelines", str(guideline_dir)])
    assert result.exit_code == 0, result.output
    assert len(started) == 1  # the fixed set starts


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("auth: [\n", "the settings file is not valid YAML"),
        ("auth:\n  issuers: 5\n", "invalid settings: auth.issuers: Input should be a valid list"),
        ("fhir_budget_seconds: 100\nnope: 1\n", "fhir_budget_seconds: Input should be less"),
        (None, "does not exist"),
        ("- a\n- b\n", "vejviser.yaml holds a list, not settings (key: value lines)"),
        (b"# Region Sj\xe6lland\n", "vejviser.yaml is not UTF-8 text (byte 11); save it as UTF-8"),
    ],
    ids=["not yaml", "wrong type", "out of range and unknown", "missing", "a list", "latin-1"],
)
def test_serve_says_what_is_wrong_with_its_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: str | bytes | None, message: str
) -> None:
    """Not a traceback; and a missing file is not read as an empty one. Found by QA (ops): a
    list said 'dictionary update sequence element #0 has length 1; 2 is required', a file
    saved in Windows-1252 "'utf-8' codec can't decode byte 0xe6", neither naming the file."""
    monkeypatch.setenv(CONFIG_ENV, "")  # serve sets it for the process; put back afterwards
    monkeypatch.setattr("uvicorn.run", lambda application, **_: pytest.fail("started"))
    monkeypatch.setattr("service.guideline_source.configure_logging", lambda: None)
    path = tmp_path / "vejviser.yaml"
    if isinstance(config, bytes):
        path.write_bytes(config)
    elif config is not None:
        path.write_text(config)
    result = runner.invoke(app, ["serve", "--config", str(path)])
    assert result.exit_code == 1 and message in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_check_fails_on_a_guideline_the_population_engine_cannot_build(
    guideline_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the SQL engine lacks is found when the guideline is checked, not in a sweep."""

    def lacking(self: GuidelineSql) -> None:
        raise TypeError("no SQL for Novelty")

    monkeypatch.setattr(GuidelineSql, "outcomes", lacking)
    result = runner.invoke(app, ["guidelines", "check", str(guideline_dir)])
    assert result.exit_code == 1
    assert (
        "example.yaml: example-hba1c 1.0.0: the population engine cannot evaluate this guideline "
        "(TypeError: no SQL for Novelty); a sweep that includes it would stop"
    ) in result.output
    assert "1 test case(s): 0 failed; 1 cannot be swept." in result.output


def test_schema_is_json_schema() -> None:
    result = runner.invoke(app, ["guidelines", "schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert {"register", "facts", "targets", "tests"} <= set(schema["properties"])


def test_evaluate_explains_in_text(guideline_dir: Path) -> None:
    args = [
        "evaluate",
        str(BUNDLE),
        "--as-of",
        "2026-06-01",
        "-g",
        str(guideline_dir),
        "--language",
        "en",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (
        "[warning] HbA1c 67 mmol/mol (2026-03-02) is above the target 58 mmol/mol" in result.output
    )
    assert "Target: ischaemic heart disease. Source: Observation/abc" in result.output


def test_evaluate_as_json(guideline_dir: Path) -> None:
    args = [
        "evaluate",
        str(BUNDLE),
        "--as-of",
        "2026-06-01",
        "-g",
        str(guideline_dir),
        "--format",
        "json",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (patient,) = json.loads(result.stdout)
    (guideline,) = patient["guidelines"]
    assert guideline["targets"][0]["value"] == 58
    assert guideline["recommendations"][0]["evidence"] == [
        "Observation/abc",
        "Condition/ihd",
        "Condition/t2d",
    ]


def test_evaluate_says_why_a_dead_patient_is_in_no_register(
    tmp_path: Path, guideline_dir: Path
) -> None:
    bundle = json.loads(BUNDLE.read_text(encoding="utf-8"))
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "Patient":
            entry["resource"]["deceasedDateTime"] = "2026-05-20"
    dead = tmp_path / "dead.json"
    dead.write_text(json.dumps(bundle), encoding="utf-8")
    args = ["evaluate", str(dead), "--as-of", "2026-06-01", "-g", str(guideline_dir)]
    text = runner.invoke(app, [*args, "--language", "en"])
    assert text.exit_code == 0, text.output
    assert "(2026-06-01): died 2026-05-20: in no register" in text.output
    assert "Register: no" in text.output
    assert "Facts:" not in text.output  # found by a GP's QA pass: an empty "Facts: " per guideline
    as_json = runner.invoke(app, [*args, "--format", "json"])
    (patient,) = json.loads(as_json.stdout)
    assert patient["deceased"] is True
    assert [g["in_register"] for g in patient["guidelines"]] == [False]
    before = runner.invoke(app, [*args[:2], "--as-of", "2026-05-19", *args[4:], "--format", "json"])
    (alive,) = json.loads(before.stdout)
    assert alive["deceased"] is False and alive["guidelines"][0]["in_register"] is True


def test_evaluate_rejects_a_file_that_is_not_fhir(tmp_path: Path, guideline_dir: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("this is not json")
    result = runner.invoke(app, ["evaluate", str(bad), "-g", str(guideline_dir)])
    assert result.exit_code == 2
    assert "bad.json" in result.output


def test_evaluate_reads_a_gzipped_bundle(tmp_path: Path, guideline_dir: Path) -> None:
    """Synthea's files are .json.gz; a gzip file is read as one whatever its name."""
    args = ["--as-of", "2026-06-01", "-g", str(guideline_dir), "--language", "en"]
    plain = runner.invoke(app, ["evaluate", str(BUNDLE), *args])
    assert plain.exit_code == 0, plain.output
    for name in ("patient.json.gz", "patient.json"):
        (tmp_path / name).write_bytes(gzip.compress(BUNDLE.read_bytes()))
        packed = runner.invoke(app, ["evaluate", str(tmp_path / name), *args])
        assert packed.exit_code == 0, packed.output
        assert packed.output == plain.output
    (tmp_path / "cut.json.gz").write_bytes(gzip.compress(BUNDLE.read_bytes())[:30])
    cut = runner.invoke(app, ["evaluate", str(tmp_path / "cut.json.gz"), *args])
    assert cut.exit_code == 2 and "cut.json.gz: not a readable gzip file" in cut.output


def test_evaluate_missing_file(guideline_dir: Path) -> None:
    result = runner.invoke(app, ["evaluate", "/nonexistent/x.json", "-g", str(guideline_dir)])
    assert result.exit_code == 2
    assert "cannot read" in result.output


def test_list_as_text_and_json(guideline_dir: Path) -> None:
    text = runner.invoke(app, ["guidelines", "list", str(guideline_dir)])
    assert text.exit_code == 0
    assert "example-hba1c" in text.output and "from 2020-01-01" in text.output
    rows = json.loads(
        runner.invoke(app, ["guidelines", "list", str(guideline_dir), "--format", "json"]).output
    )
    assert rows[0]["id"] == "example-hba1c" and rows[0]["status"] == "active"
    assert rows[0]["effective_until"] is None


def test_docs_writes_and_checks_the_catalogue(guideline_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "guidelines.md"
    assert (
        runner.invoke(app, ["guidelines", "docs", str(guideline_dir), "--out", str(out)]).exit_code
        == 0
    )
    text = out.read_text()
    assert "### Eksempel HbA1c (da)" in text and "### Example HbA1c (en)" in text
    assert "`frail`: 70 mmol/mol — frail elderly" in text
    check = runner.invoke(
        app, ["guidelines", "docs", str(guideline_dir), "--out", str(out), "--check"]
    )
    assert check.exit_code == 0
    out.write_text(text + "edited by hand\n")
    stale = runner.invoke(
        app, ["guidelines", "docs", str(guideline_dir), "--out", str(out), "--check"]
    )
    assert stale.exit_code == 1 and "out of date" in stale.output
    again = f"run `vejviser guidelines docs {guideline_dir} --out {out}`"
    assert again in stale.output, "the hint repeats the directory and file given"
    nested = tmp_path / "scratch" / "docs" / "guidelines.md"
    made = runner.invoke(app, ["guidelines", "docs", str(guideline_dir), "--out", str(nested)])
    assert made.exit_code == 0, made.output
    assert nested.read_text() == text


def test_a_directory_without_guidelines_or_with_yml_files_is_not_a_pass(
    guideline_dir: Path, tmp_path: Path
) -> None:
    """Found by QA: an empty directory "all passed", and a rule file saved as .yml was ignored."""
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(app, ["guidelines", "check", str(tmp_path / "empty")])
    assert empty.exit_code == 1
    assert "holds no guideline (rule files are *.yaml)" in empty.output
    (guideline_dir / ".github" / "workflows").mkdir(parents=True)
    (guideline_dir / ".github" / "workflows" / "ci.yml").write_text("on: push\n")
    (guideline_dir / ".github" / "dependabot.yaml").write_text("version: 2\n")
    assert runner.invoke(app, ["guidelines", "check", str(guideline_dir)]).exit_code == 0, (
        "hidden directories hold no rule files"
    )
    (guideline_dir / "example.yaml").rename(guideline_dir / "example.yml")
    renamed = runner.invoke(app, ["guidelines", "check", str(guideline_dir)])
    assert renamed.exit_code == 1
    assert "example.yml: rule files end in .yaml: rename it, or it is not read" in renamed.output


DIABETIC = {
    "birth_date": "1950-01-01",
    "sex": "female",
    "conditions": [{"code": "icpc2:T90", "onset": "2015-01-01"}],
    "observations": [
        {"code": "npu:NPU27300", "value": 67, "unit": "mmol/mol", "date": "2026-03-02"}
    ],
}


def write_patient_store(store: Path, spec: dict) -> None:
    """A facts store of one shorthand patient, listed at practice 123456."""
    record = normalise_patient(case_resources(CasePatient.model_validate(spec)))
    write_store(facts_tables([record._replace(practice="123456")]), store)


def test_sweep_over_a_store(tmp_path: Path, guideline_dir: Path) -> None:
    write_patient_store(tmp_path / "store", DIABETIC)
    (tmp_path / "clusters.csv").write_text("practice,cluster\n123456,klynge-1\n")
    args = [
        "sweep",
        "--store",
        str(tmp_path / "store"),
        "--as-of",
        "2026-06-01",
        "--out",
        str(tmp_path / "out"),
    ]
    args += [
        "--clusters",
        str(tmp_path / "clusters.csv"),
        "-g",
        str(guideline_dir),
        "--language",
        "en",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (listing,) = (tmp_path / "out").glob("*/2026-06-01/lists/123456.csv")
    assert "case-patient" in listing.read_text(encoding="utf-8-sig")
    rows = len(listing.read_text(encoding="utf-8-sig").splitlines()) - 1
    assert "  1 patient(s) in 1 practice(s) and 1 cluster(s); 1 guideline(s); snapshot " in (
        result.output
    )
    assert f"  2026-06-01: {rows} patient list row(s), " in result.output
    missing = runner.invoke(
        app,
        [
            "sweep",
            "--store",
            str(tmp_path / "nope"),
            "--as-of",
            "2026-06-01",
            "--out",
            str(tmp_path),
        ],
    )
    assert (
        missing.exit_code == 2
        and "is not a facts store: there is no such directory" in missing.output
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"ydernummer;klynge\n123456;k1\n", "its first line is 'ydernummer;klynge'"),
        (b"", "the columns must be practice,cluster (or practice;cluster); it is empty"),
        (b"practice,cluster\n", "maps no practice to a cluster"),
        (b"practice,cluster\n123456,k1,k2\n", "clusters.csv:2: a row needs a practice and a"),
        (b"practice,cluster\n123456\n", "clusters.csv:2: a row needs a practice and a"),
        (b"practice,cluster\n123456,k1\n123456,k2\n", "clusters.csv:3: practice 123456 is"),
        ("practice,cluster\n123456,Nordøst\n".encode("latin-1"), "is not UTF-8 text"),
    ],
    ids=[
        "other names",
        "empty",
        "no rows",
        "extra field",
        "missing field",
        "two clusters",
        "latin-1",
    ],
)
def test_a_clusters_file_that_cannot_be_right_stops_the_sweep(
    tmp_path: Path, guideline_dir: Path, content: bytes, message: str
) -> None:
    """Each of these would otherwise move practices out of their cluster's rates silently."""
    write_patient_store(tmp_path / "store", DIABETIC)
    (tmp_path / "clusters.csv").write_bytes(content)
    args = ["sweep", "--store", str(tmp_path / "store"), "--as-of", "2026-06-01", "-g"]
    args += [str(guideline_dir), "--out", str(tmp_path / "out"), "--clusters"]
    result = runner.invoke(app, [*args, str(tmp_path / "clusters.csv")])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*/manifest.json"))


def test_a_clusters_file_from_excel_with_a_bom_is_read(tmp_path: Path, guideline_dir: Path) -> None:
    write_patient_store(tmp_path / "store", DIABETIC)
    (tmp_path / "clusters.csv").write_text("practice,cluster\n123456,Nordøst\n", "utf-8-sig")
    args = ["sweep", "--store", str(tmp_path / "store"), "--as-of", "2026-06-01", "-g"]
    args += [str(guideline_dir), "--out", str(tmp_path / "out")]
    result = runner.invoke(app, [*args, "--clusters", str(tmp_path / "clusters.csv")])
    assert result.exit_code == 0, result.output
    assert "1 practice(s) and 1 cluster(s)" in result.output
    (indicators,) = (tmp_path / "out").glob("*/2026-06-01/indicators.csv")
    assert "Nordøst" in indicators.read_text(encoding="utf-8-sig")


@pytest.mark.parametrize(
    "content",
    [
        b"\xef\xbb\xbfpractice;cluster\r\n123456;Nord\xc3\xb8st\r\n",
        b"practice, cluster\n123456,Nord\xc3\xb8st\n",
        b" practice ; cluster \n123456; Nord\xc3\xb8st\n",
    ],
    ids=["danish excel: semicolons, BOM, CRLF", "space after the comma", "spaces, semicolons"],
)
def test_a_clusters_file_with_semicolons_or_spaced_names_is_read(
    tmp_path: Path, guideline_dir: Path, content: bytes
) -> None:
    """Danish Excel's "CSV UTF-8" separates with ';'; it was refused as having wrong columns."""
    write_patient_store(tmp_path / "store", DIABETIC)
    (tmp_path / "clusters.csv").write_bytes(content)
    args = ["sweep", "--store", str(tmp_path / "store"), "--as-of", "2026-06-01", "-g"]
    args += [str(guideline_dir), "--out", str(tmp_path / "out")]
    result = runner.invoke(app, [*args, "--clusters", str(tmp_path / "clusters.csv")])
    assert result.exit_code == 0, result.output
    assert "1 practice(s) and 1 cluster(s)" in result.output and not result.stderr
    (indicators,) = (tmp_path / "out").glob("*/2026-06-01/indicators.csv")
    assert "cluster,Nordøst," in indicators.read_text(encoding="utf-8-sig")


def test_a_clusters_file_that_misses_some_of_the_stores_practices_is_warned_of(
    tmp_path: Path, guideline_dir: Path
) -> None:
    """A mistyped ydernummer (23456 for 234567) left that practice in no cluster and its
    cluster's rates without it, and the sweep said nothing."""
    record = normalise_patient(case_resources(CasePatient.model_validate(DIABETIC)))
    practices = ["123456", "234567", "345678"]
    records = [record._replace(id=f"p{n}", practice=p) for n, p in enumerate(practices)]
    write_store(facts_tables(records), tmp_path / "store")
    clusters = tmp_path / "clusters.csv"
    clusters.write_text("practice,cluster\n123456,A\n23456,A\n345678,B\n")
    args = ["sweep", "--store", str(tmp_path / "store"), "--as-of", "2026-06-01", "-g"]
    args += [str(guideline_dir), "--out", str(tmp_path / "out"), "--clusters", str(clusters)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "3 practice(s) and 2 cluster(s)" in result.output
    assert f"warning: 1 of the 3 practice(s) in {clusters} are not in the store: 23456" in (
        result.stderr
    )
    assert (
        f"warning: 1 of the store's 3 practice(s) have no cluster in {clusters} and count in no "
        "cluster's rates: 234567"
    ) in result.stderr
    assert "no practice of the store is in" not in result.stderr


def test_a_clusters_file_naming_none_of_the_stores_practices_is_warned_of(
    tmp_path: Path, guideline_dir: Path
) -> None:
    """A file of another region's practices sweeps, but without the warning it would look like
    a run with clusters."""
    write_patient_store(tmp_path / "store", DIABETIC)
    (tmp_path / "clusters.csv").write_text("practice,cluster\n654321,Nordøst\n")
    args = ["sweep", "--store", str(tmp_path / "store"), "--as-of", "2026-06-01", "-g"]
    args += [str(guideline_dir), "--out", str(tmp_path / "out")]
    result = runner.invoke(app, [*args, "--clusters", str(tmp_path / "clusters.csv")])
    assert result.exit_code == 0, result.output
    assert "1 practice(s) and 0 cluster(s)" in result.output
    assert "warning: no practice of the store is in" in result.stderr
    matching = tmp_path / "matching.csv"
    matching.write_text("practice,cluster\n123456,Nordøst\n")
    result = runner.invoke(app, [*args, "--clusters", str(matching)])
    assert result.exit_code == 0 and "warning" not in result.output, result.output


def test_the_feedback_database_must_exist_and_be_one(tmp_path: Path, guideline_dir: Path) -> None:
    """A mistyped path would create an empty store and sweep without any exception."""
    write_patient_store(tmp_path / "store", DIABETIC)
    args = ["sweep", "--store", str(tmp_path / "store"), "--as-of", "2026-06-01", "-g"]
    args += [str(guideline_dir), "--out", str(tmp_path / "out"), "--feedback-database"]
    missing = runner.invoke(app, [*args, str(tmp_path / "feedbak.sqlite")])
    assert missing.exit_code == 2 and "feedbak.sqlite does not exist" in missing.output
    assert not (tmp_path / "feedbak.sqlite").exists()
    (tmp_path / "notes.txt").write_text("not a database\n" * 100)
    other = runner.invoke(app, [*args, str(tmp_path / "notes.txt")])
    assert other.exit_code == 2 and "cannot be read as a feedback database" in other.output
    FeedbackStore(tmp_path / "feedback.sqlite").close()
    empty = runner.invoke(app, [*args, str(tmp_path / "feedback.sqlite")])
    assert empty.exit_code == 0, empty.output
    assert "; 0 patient exception(s) from CDS feedback" in empty.output


@pytest.mark.parametrize(
    "command",
    [
        ["synth", "--patients", "5", "--practices", "1", "--clusters", "1", "--seed", "1", "--out"],
        ["ingest", "in.ndjson", "--store"],
        ["sweep", "--store", "store", "--as-of", "2026-06-01", "--out"],
        ["sweep", "--store", "store", "--as-of", "2026-06-01", "--out", "o", "--temp-directory"],
        ["compare", "a", "b", "--out"],
        ["demo", "--out"],
    ],
    ids=["synth", "ingest", "sweep", "sweep temp", "compare", "demo"],
)
def test_a_file_given_for_a_directory_is_refused_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("my notes\n")
    result = runner.invoke(app, [*command, "notes.txt"])
    assert result.exit_code == 2 and "is a file" in result.output, result.output
    assert (tmp_path / "notes.txt").read_text() == "my notes\n"


@pytest.mark.parametrize("command", [["guidelines", "schema"], ["guidelines", "docs"]])
def test_a_file_option_refuses_a_directory_and_makes_a_missing_folder(
    tmp_path: Path, guideline_dir: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # short paths: the error box does not break them
    extra = [str(guideline_dir)] if command[1] == "docs" else []
    (tmp_path / "docs").mkdir()
    folder = runner.invoke(app, [*command, *extra, "--out", "docs"])
    assert folder.exit_code == 2 and "is a directory" in folder.output, folder.output
    missing = runner.invoke(app, [*command, *extra, "--out", "no/x"])
    assert missing.exit_code == 0 and (tmp_path / "no" / "x").read_text(), missing.output
    (tmp_path / "notes.txt").write_text("my notes\n")
    under_a_file = runner.invoke(app, [*command, *extra, "--out", "notes.txt/x"])
    assert under_a_file.exit_code == 1, under_a_file.output
    assert "cannot write notes.txt/x" in under_a_file.output
    written = runner.invoke(app, [*command, *extra, "--out", "x"])
    assert written.exit_code == 0 and (tmp_path / "x").read_text()


def test_sweep_bounds_duckdb_and_shows_no_bars_off_a_terminal(
    tmp_path: Path, guideline_dir: Path
) -> None:
    write_patient_store(tmp_path / "store", {"birth_date": "1950-01-01", "sex": "female"})
    args = ["sweep", "--store", str(tmp_path / "store"), "--as-of", "2026-06-01"]
    args += ["--out", str(tmp_path / "out"), "-g", str(guideline_dir)]
    result = runner.invoke(app, [*args, "--memory-limit", "512MB", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "━" not in result.output  # no progress bar when not on a terminal
    assert not list((tmp_path / "out").glob(".duckdb-*")), "the spill directory is removed"
    bad = runner.invoke(app, [*args, "--memory-limit", "lots"])
    assert bad.exit_code == 2 and "bad DuckDB setting" in bad.output
    heap = runner.invoke(app, [*args, "--engine", "spark", "--spark-memory", "4g -Dx=y"])
    assert heap.exit_code == 2 and "not a JVM heap size" in heap.output


def test_a_sweep_removes_the_duckdb_directory_of_a_killed_sweep(
    tmp_path: Path, guideline_dir: Path
) -> None:
    """kill -9 leaves .duckdb-*, the loaded facts included; a running sweep's is kept."""
    write_patient_store(tmp_path / "store", {"birth_date": "1950-01-01", "sex": "female"})
    killed = tmp_path / "out" / ".duckdb-999999999-abc"  # above any pid_max: not running
    running = tmp_path / "out" / f".duckdb-{os.getpid()}-xyz"
    for spill in (killed, running):
        spill.mkdir(parents=True)
        (spill / "sweep.duckdb").write_bytes(b"facts")
    args = ["sweep", "--store", str(tmp_path / "store"), "--as-of", "2026-06-01"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "out"), "-g", str(guideline_dir)])
    assert result.exit_code == 0, result.output
    assert not killed.exists()
    assert (running / "sweep.duckdb").exists()


def test_a_sweep_stops_with_the_file_the_population_engine_cannot_build(
    tmp_path: Path, guideline_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same words as the check, before anything is published; not a traceback."""

    def lacking(self: GuidelineSql) -> None:
        raise TypeError("no SQL for Novelty")

    monkeypatch.setattr(GuidelineSql, "outcomes", lacking)
    write_patient_store(tmp_path / "store", DIABETIC)
    args = ["sweep", "--store", str(tmp_path / "store"), "--as-of", "2031-01-07"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "out"), "-g", str(guideline_dir)])
    assert result.exit_code == 2
    assert (
        "the population engine cannot evaluate this guideline (TypeError: no SQL for Novelty)"
        in (result.output)
    )
    assert "run vejviser guidelines check on the directory" in result.output
    assert not list((tmp_path / "out").glob("*/2031-01-07/lists/*.csv"))


def published_runs(tmp_path: Path, guideline_dir: Path, dates: dict[str, list[str]]) -> list[Path]:
    """One run per as-of date (with its extra options) of the store in ``tmp_path / 'store'``."""
    runs = []
    for as_of, extra in dates.items():
        args = ["sweep", "--store", str(tmp_path / "store"), "--as-of", as_of, "-g"]
        args += [str(guideline_dir), "--out", str(tmp_path / as_of), "--language", "en", *extra]
        assert runner.invoke(app, args).exit_code == 0
        (run,) = (tmp_path / as_of).glob("*/manifest.json")
        runs.append(run.parent)
    return runs


def test_compare_two_published_sweeps(tmp_path: Path, guideline_dir: Path) -> None:
    write_patient_store(tmp_path / "store", DIABETIC)
    # before and after the high HbA1c
    runs = published_runs(tmp_path, guideline_dir, {"2026-01-01": [], "2026-06-01": []})
    result = runner.invoke(app, ["compare", *map(str, runs), "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    # from "no HbA1c" (January) to "above the target" (June)
    assert "2026-01-01 -> 2026-06-01: 1 entered and 1 left a list" in result.output
    rows = (tmp_path / "cmp" / "comparison.csv").read_text(encoding="utf-8-sig").splitlines()
    changes = sorted(row.split(",")[4:7] for row in rows if row.startswith("list,"))
    assert [change[1:] for change in changes] == [
        ["case-patient", "entered"],
        ["case-patient", "left"],
    ]
    assert changes[0][0] != changes[1][0]  # two different recommendations
    assert "case-patient" not in (tmp_path / "cmp" / "comparison.md").read_text()
    assert not result.stderr
    backwards = runner.invoke(app, ["compare", *map(str, runs[::-1]), "--out", str(tmp_path / "b")])
    assert backwards.exit_code == 0
    assert "the first run is of the later date (2026-06-01 after 2026-01-01)" in backwards.stderr
    wrong = runner.invoke(app, ["compare", str(tmp_path), str(runs[1]), "--out", str(tmp_path)])
    assert wrong.exit_code == 2
    assert "neither a published run nor one of its as-of directories" in wrong.output


def test_compare_warns_of_units_in_one_run_only(tmp_path: Path, guideline_dir: Path) -> None:
    """Another cluster map (a clusters file in one run only): their rows show no change."""
    write_patient_store(tmp_path / "store", DIABETIC)
    (tmp_path / "clusters.csv").write_text("practice,cluster\n123456,Nord\n")
    clusters = ["--clusters", str(tmp_path / "clusters.csv")]
    runs = published_runs(tmp_path, guideline_dir, {"2026-01-01": [], "2026-06-01": clusters})
    result = runner.invoke(app, ["compare", *map(str, runs), "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    assert "warning: 1 cluster(s) in only one of the runs, without a change: Nord" in result.stderr
    assert "practice(s) in only one" not in result.stderr


def test_compare_names_a_new_guideline_version_and_another_threshold(
    tmp_path: Path, guideline_dir: Path
) -> None:
    """A rate that moves because the guideline changed, or a count hidden by another threshold,
    read as a practice's change without a word."""
    write_patient_store(tmp_path / "store", DIABETIC)
    (before,) = published_runs(tmp_path, guideline_dir, {"2026-01-01": []})
    source = guideline_dir / "example.yaml"
    source.write_text(source.read_text().replace("version: 1.0.0", "version: 1.1.0", 1))
    (after,) = published_runs(tmp_path, guideline_dir, {"2026-06-01": ["--suppress-below", "10"]})
    args = ["compare", str(before), str(after), "--out", str(tmp_path / "cmp")]
    result = runner.invoke(app, [*args, "--language", "en"])
    assert result.exit_code == 0, result.output
    assert (
        "warning: guideline example-hba1c is version 1.0.0 in the earlier run and 1.1.0 in the "
        "later: its rates and lists may move because the guideline changed" in result.stderr
    )
    assert "hide counts below different thresholds (5 and 10)" in result.stderr
    markdown = (tmp_path / "cmp" / "comparison.md").read_text(encoding="utf-8")
    assert "- example-hba1c: 1.0.0 → 1.1.0" in markdown
    assert "different thresholds (5 and 10)" in markdown
    same = runner.invoke(app, ["compare", str(after), str(after), "--out", str(tmp_path / "s")])
    assert same.exit_code == 0
    assert "version" not in same.stderr
    assert "thresholds" not in same.stderr


def test_compare_says_a_store_is_not_a_sweep_run(tmp_path: Path) -> None:
    """A facts store has a manifest.json too; compare read it as a run's: KeyError: 'as_of'."""
    write_patient_store(tmp_path / "store", DIABETIC)
    (tmp_path / "run").mkdir()
    args = ["compare", str(tmp_path / "store"), str(tmp_path / "run"), "--out"]
    result = runner.invoke(app, [*args, str(tmp_path / "cmp")])
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'store'} is not a sweep run" in result.output
    assert isinstance(result.exception, SystemExit), "a message, not a traceback"
    assert not (tmp_path / "cmp").exists()


def test_a_sweep_already_being_written_is_refused_in_words(
    tmp_path: Path, guideline_dir: Path
) -> None:
    """The same sweep started twice into one --out: the second stopped with a traceback."""
    write_patient_store(tmp_path / "store", DIABETIC)
    args = ["sweep", "--store", str(tmp_path / "store"), "--as-of", "2026-06-01", "-g"]
    args += [str(guideline_dir), "--out", str(tmp_path / "out")]
    assert runner.invoke(app, args).exit_code == 0
    (run,) = (tmp_path / "out").glob("*/manifest.json")
    fd = os.open(tmp_path / "out" / f".lock-{run.parent.name}", os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as the first sweep holds it while it writes
        result = runner.invoke(app, args)
    finally:
        os.close(fd)
    assert result.exit_code == 2, result.output
    assert f"another sweep is writing {run.parent} right now: wait for it" in result.output
    assert isinstance(result.exception, SystemExit), "a message, not a traceback"


def test_the_cluster_warnings_name_a_few_ydernumre_and_count_the_rest() -> None:
    """A region's file against one cluster's store would otherwise fill the terminal."""
    store = [f"{n:06d}" for n in range(1, 9)]  # 000001 .. 000008
    warnings = _cluster_warnings(Path("k.csv"), {"000001": "A", "999999": "B"}, store)
    assert warnings == [
        "warning: 1 of the 2 practice(s) in k.csv are not in the store: 999999",
        "warning: 7 of the store's 8 practice(s) have no cluster in k.csv and count in no "
        "cluster's rates: 000002, 000003, 000004, 000005, 000006 and 2 more",
    ]
    assert _cluster_warnings(Path("k.csv"), dict.fromkeys(store, "A"), store) == []


def test_synth_with_a_reference_date_writes_the_same_files_on_any_day(tmp_path: Path) -> None:
    """Without --as-of the data end today, so the same seed gave other files the next day."""
    args = ["synth", "--patients", "20", "--practices", "2", "--clusters", "1", "--seed", "7"]
    for name in ("a", "b"):
        result = runner.invoke(app, [*args, "--as-of", "2026-06-01", "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        assert "2 practice(s) and 1 cluster(s) (seed 7, reference date 2026-06-01)" in result.output
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files and all(
        (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files
    )


def test_a_sweep_of_what_is_no_store_says_how_to_make_one(
    tmp_path: Path, guideline_dir: Path
) -> None:
    (tmp_path / "ndjson").mkdir()
    (tmp_path / "ndjson" / "Patient.ndjson").write_text('{"resourceType": "Patient"}\n')
    for store, said in [
        (tmp_path / "missing", "is not a facts store: there is no such directory"),
        (tmp_path / "ndjson", "is not a facts store (it has no manifest.json): make one with "),
    ]:
        args = ["sweep", "--store", str(store), "--as-of", "2026-06-01", "-g", str(guideline_dir)]
        result = runner.invoke(app, [*args, "--out", str(tmp_path / "out")])
        assert result.exit_code == 2 and said in result.output, result.output


def test_a_sweep_that_says_little_is_warned_of(tmp_path: Path, guideline_dir: Path) -> None:
    """Published all the same, but a date past the data or before every guideline said nothing."""
    write_patient_store(tmp_path / "store", DIABETIC)
    args = ["sweep", "--store", str(tmp_path / "store"), "-g", str(guideline_dir)]
    args += ["--out", str(tmp_path / "out")]
    for day in ("1900-01-01", "2040-01-01"):
        args += ["--as-of", day]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "warning: no guideline is in force on 1900-01-01" in result.stderr
    assert (
        "warning: 2040-01-01 is after today, and the store's latest record is of 2026-03-02"
        in result.stderr
    )
    assert "1900-01-01 is after" not in result.stderr


def test_serve_help_names_the_settings_defaults() -> None:
    """The options default to None (the settings decide); their help says what that is."""
    from service.settings import Settings

    fields = Settings.model_fields
    shown = " ".join(runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "300"}).output.split())
    assert f"default: the settings', {fields['guidelines_poll_seconds'].default:g})" in shown
    assert f"default: the settings', {fields['guidelines_branch'].default})" in shown


def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, "")  # serve sets it for the process; put back afterwards
    monkeypatch.setattr("uvicorn.run", lambda application, **_: pytest.fail("started"))
    monkeypatch.setattr("service.guideline_source.configure_logging", lambda: None)


@pytest.mark.parametrize(
    ("database", "message"),
    [
        ("no-such-folder/feedback.sqlite", "unable to open database file"),
        ("not-sqlite.txt", "file is not a database"),
        (".", "unable to open database file"),
    ],
    ids=["missing folder", "not a database", "a directory"],
)
def test_serve_refuses_a_feedback_database_it_cannot_use(
    tmp_path: Path,
    guideline_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    database: str,
    message: str,
) -> None:
    """Found by QA (ops): uvicorn said 'Application startup complete'-style lines, then a
    traceback from sqlite3 and exit code 3."""
    no_server(monkeypatch)
    (tmp_path / "not-sqlite.txt").write_text("a text file, not SQLite " * 10)
    path = tmp_path / database
    monkeypatch.setenv("VEJVISER_FEEDBACK_DATABASE", str(path))
    result = runner.invoke(app, ["serve", "--no-auth", "--guidelines", str(guideline_dir)])
    assert result.exit_code == 1, result.output
    assert f"the feedback database {path} cannot be used: {message}" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_serve_refuses_a_port_out_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by QA (ops): --port 99999 got as far as bind() and ended in an OverflowError."""
    no_server(monkeypatch)
    result = runner.invoke(app, ["serve", "--no-auth", "--port", "99999"])
    assert result.exit_code == 2 and "--port" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_serve_refuses_an_unknown_environment_variable(
    guideline_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by QA (ops): a misspelt top-level variable was ignored (the default stayed in
    force), while a misspelt nested one stopped the service."""
    no_server(monkeypatch)
    monkeypatch.setenv("VEJVISER_FHIR_BUDGET_SECOND", "2")
    monkeypatch.setenv("VEJVISER_TOKEN", "for guidelines status, not a setting")
    result = runner.invoke(app, ["serve", "--no-auth", "--guidelines", str(guideline_dir)])
    assert result.exit_code == 1
    assert result.output.strip() == "unknown environment variable(s): VEJVISER_FHIR_BUDGET_SECOND"


def test_serve_leaves_uvicorn_its_json_log_handler(
    guideline_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn's default log_config replaces the handlers of its loggers with plain-text ones."""
    options: list[dict[str, object]] = []
    monkeypatch.setenv(CONFIG_ENV, "")
    monkeypatch.setattr("uvicorn.run", lambda application, **kwargs: options.append(kwargs))
    monkeypatch.setattr("service.guideline_source.configure_logging", lambda: None)
    monkeypatch.setenv("VEJVISER_FEEDBACK_DATABASE", str(guideline_dir.parent / "feedback.sqlite"))
    result = runner.invoke(app, ["serve", "--no-auth", "--guidelines", str(guideline_dir)])
    assert result.exit_code == 0, result.output
    assert options[0]["log_config"] is None
