"""The ``vejviser`` command: guideline checks, explanations and the demo.

Side effects (files, terminal, exit codes) live here; everything it calls is pure.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import orjson
import typer

from engine.cases import run_cases
from engine.explain import explain_text, outcome_json
from engine.patient import PatientEngine
from fhir_adapter.normalise import FhirInputError, normalise, read_resources
from rules import schema
from rules.errors import RuleFileError
from rules.guideline_set import GuidelineSet, load_guidelines

REPOSITORY = Path(__file__).resolve().parents[1]

app = typer.Typer(
    help="Vejviser: clinical guidelines as rule files, evaluated for one patient or a population.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
guidelines_app = typer.Typer(
    help="Check, document and export the guideline rule files.", no_args_is_help=True
)
app.add_typer(guidelines_app, name="guidelines")


class Format(StrEnum):
    text = "text"
    json = "json"


class Language(StrEnum):
    da = "da"
    en = "en"


class SchemaKind(StrEnum):
    guideline = "guideline"
    valueset = "valueset"


def default_guidelines() -> Path:
    """$VEJVISER_GUIDELINES, else the guideline library that ships with Vejviser."""
    return Path(os.environ.get("VEJVISER_GUIDELINES", REPOSITORY / "guidelines"))


GuidelinesDir = Annotated[
    Path | None,
    typer.Option("--guidelines", "-g", help="Guideline directory (default: the shipped library)."),
]


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code)


def load_or_exit(directory: Path) -> GuidelineSet:
    try:
        return load_guidelines(directory)
    except RuleFileError as exc:
        for error in exc.errors:
            typer.echo(str(error), err=True)
        typer.echo(f"{len(exc.errors)} error(s); nothing was loaded.", err=True)
        raise typer.Exit(1) from None


@guidelines_app.command("check")
def check(
    directory: Annotated[Path | None, typer.Argument(help="Guideline directory.")] = None,
) -> None:
    """Validate every rule and value-set file and run every test case (exit 1 on any failure)."""
    guidelines = load_or_exit(directory or default_guidelines())
    results = run_cases(guidelines)
    failures = [failure for result in results for failure in result.failures]
    for failure in failures:
        typer.echo(str(failure), err=True)
    failed = sum(not r.passed for r in results)
    summary = (
        f"{len(guidelines.files)} guideline(s), {len(guidelines.valuesets)} value set(s), "
        f"{len(results)} test case(s): "
    )
    if failed:
        typer.echo(summary + f"{failed} failed.", err=True)
        raise typer.Exit(1)
    typer.echo(summary + "all passed.")


@guidelines_app.command("schema")
def export_schema(
    kind: Annotated[SchemaKind, typer.Option(help="Which file format.")] = SchemaKind.guideline,
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
) -> None:
    """Print the JSON Schema of rule files (for editors such as VS Code's YAML extension)."""
    model = schema.Guideline if kind is SchemaKind.guideline else schema.ValueSet
    text = json.dumps(model.model_json_schema(by_alias=True), indent=2, ensure_ascii=False)
    if out is None:
        typer.echo(text)
    else:
        out.write_text(text + "\n", encoding="utf-8")


@app.command()
def evaluate(
    bundle: Annotated[Path, typer.Argument(help="FHIR R4 Bundle, resource list or NDJSON file.")],
    as_of: Annotated[
        dt.datetime | None,
        typer.Option(formats=["%Y-%m-%d"], help="Reference date (default: today)."),
    ] = None,
    output: Annotated[Format, typer.Option("--format", help="text or json.")] = Format.text,
    language: Annotated[Language, typer.Option(help="Language of texts.")] = Language.da,
    guidelines_dir: GuidelinesDir = None,
) -> None:
    """Explain, per guideline, what applies to the patient(s) in a FHIR file and why."""
    reference = as_of.date() if as_of else dt.date.today()
    try:
        data = bundle.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read {bundle}: {exc.strerror}") from None
    try:
        result = normalise(read_resources(data))
    except FhirInputError as exc:
        raise fail(f"{bundle}: {exc}") from None
    for issue in result.issues:
        typer.echo(f"skipped {issue.resource}: {issue.reason}", err=True)
    if not result:
        raise fail(f"{bundle}: no Patient resource found")
    guidelines = load_or_exit(guidelines_dir or default_guidelines())
    engine = PatientEngine(guidelines)
    report = []
    for patient in result.values():
        for issue in patient.issues:
            typer.echo(f"skipped {issue.resource}: {issue.reason}", err=True)
        outcomes = engine.evaluate(patient, reference)
        if output is Format.json:
            report.append(
                {
                    "patient": patient.id,
                    "as_of": reference.isoformat(),
                    "guidelines": [outcome_json(o) for o in outcomes],
                }
            )
        else:
            typer.echo(f"Patient/{patient.id} ({reference.isoformat()})\n")
            typer.echo(explain_text(guidelines, outcomes, language.value))
    if output is Format.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8080,
    guidelines_dir: GuidelinesDir = None,
    config: Annotated[Path | None, typer.Option(help="YAML settings file.")] = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Accept calls without a JWT (local demos only).")
    ] = False,
) -> None:
    """Run the CDS Hooks service (FastAPI on uvicorn)."""
    import uvicorn

    from service.app import create_app
    from service.settings import CONFIG_ENV, Settings

    if config is not None:
        os.environ[CONFIG_ENV] = str(config)
    overrides: dict[str, object] = {}
    if guidelines_dir is not None:
        overrides["guidelines"] = guidelines_dir
    settings = Settings(**overrides)
    if no_auth:
        settings = settings.model_copy(
            update={"auth": settings.auth.model_copy(update={"enabled": False})}
        )
        typer.secho(
            "WARNING: authentication is OFF (--no-auth): any caller can use this service. "
            "Never run it like this outside a local demo.",
            err=True,
            fg=typer.colors.RED,
            bold=True,
        )
    elif not settings.auth.issuers:
        raise fail(
            "No trusted issuers are configured (auth.issuers in the --config file). "
            "Configure the EHRs allowed to call, or use --no-auth for a local demo.",
            1,
        )
    try:
        application = create_app(settings)
    except RuleFileError as exc:
        for error in exc.errors:
            typer.echo(str(error), err=True)
        raise typer.Exit(1) from None
    uvicorn.run(application, host=host, port=port, log_level="info", access_log=False)


EXAMPLES = REPOSITORY / "examples"
DEMO_AS_OF = dt.date(2026, 7, 2)


@app.command()
def demo(
    language: Annotated[Language, typer.Option(help="Language of texts.")] = Language.da,
) -> None:
    """Check the shipped guidelines, then explain them for the example patients in examples/."""
    guidelines = load_or_exit(default_guidelines())
    results = run_cases(guidelines)
    failed = [r for r in results if not r.passed]
    typer.echo(
        f"Guideline library: {len(guidelines.files)} guidelines, {len(results)} test cases, "
        f"{len(failed)} failed.\n"
    )
    engine = PatientEngine(guidelines)
    for path in sorted(EXAMPLES.glob("*.json")):
        for patient in normalise(read_resources(path.read_bytes())).values():
            typer.echo(f"== {path.name}: Patient/{patient.id}, reference date {DEMO_AS_OF} ==\n")
            outcomes = [o for o in engine.evaluate(patient, DEMO_AS_OF) if o.in_register]
            typer.echo(explain_text(guidelines, outcomes, language.value))
    if failed:
        raise typer.Exit(1)
