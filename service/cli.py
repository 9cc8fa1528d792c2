"""The ``vejviser`` command: guideline checks, explanations and the demo.

Side effects (files, terminal, exit codes) live here; everything it calls is pure.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer

from fhir_adapter.normalise import FhirInputError, normalise, read_resources
from rules.effective import danish_today
from rules.errors import RuleFileError

# The rule compiler, the engine and the schemas are imported by the commands that use them:
# with them here every command (and --help) took 0.5 s more to start, and so did each ingest
# worker, which imports this module again as the main module of its parent.
if TYPE_CHECKING:
    import csv

    import httpx2

    from engine.population.outputs import ComparisonReport
    from engine.population.run import RunManifest, SqlSteps
    from fhir_adapter.backend_auth import BackendServicesAuth
    from fhir_adapter.bulk import ExportResult
    from rules.guideline_set import GuidelineSet
    from service.feedback import PatientException
    from service.settings import Settings


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
conformance_app = typer.Typer(
    help="Check a running service against a standard.", no_args_is_help=True
)
app.add_typer(conformance_app, name="conformance")


class SweepEngine(StrEnum):
    duckdb = "duckdb"
    spark = "spark"


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
    from rules.guideline_set import load_guidelines

    try:
        guidelines = load_guidelines(directory)
    except RuleFileError as exc:
        for error in exc.errors:
            typer.echo(str(error), err=True)
        typer.echo(f"{len(exc.errors)} error(s); nothing was loaded.", err=True)
        raise typer.Exit(1) from None
    if not guidelines.files:  # "all passed" of nothing read as a good set
        raise fail(f"{directory} holds no guideline (rule files are *.yaml)", 1)
    return guidelines


@guidelines_app.command("check")
def check(
    directory: Annotated[Path | None, typer.Argument(help="Guideline directory.")] = None,
) -> None:
    """Validate every rule and value-set file, run every test case, and build every guideline's
    population queries (exit 1 on any failure)."""
    from engine.cases import case_failures, run_cases
    from engine.population.sql import sweep_problems

    guidelines = load_or_exit(directory or default_guidelines())
    results = run_cases(guidelines)
    failures = case_failures(results)
    for failure in failures:
        typer.echo(str(failure), err=True)
    unsweepable = sweep_problems(guidelines)
    for problem in unsweepable:
        typer.echo(problem, err=True)
    failed = sum(not r.passed for r in results)
    summary = (
        f"{len(guidelines.files)} guideline(s), {len(guidelines.valuesets)} value set(s), "
        f"{len(results)} test case(s): "
    )
    if failed or unsweepable:
        cannot = f"; {len(unsweepable)} cannot be swept" if unsweepable else ""
        typer.echo(summary + f"{failed} failed{cannot}.", err=True)
        raise typer.Exit(1)
    typer.echo(summary + "all passed.")


@guidelines_app.command("list")
def list_guidelines(
    directory: Annotated[Path | None, typer.Argument(help="Guideline directory.")] = None,
    output: Annotated[Format, typer.Option("--format", help="text or json.")] = Format.text,
) -> None:
    """List every guideline version: id, version, title, effective period and status."""
    from rules.catalogue import listing

    rows = listing(load_or_exit(directory or default_guidelines()))
    if output is Format.json:
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    for row in rows:
        until = f" until {row['effective_until']}" if row["effective_until"] else ""
        typer.echo(
            f"{row['id']:<28} {row['version']:<8} {row['status']:<8} "
            f"from {row['effective_from']}{until}  {row['title']['en']}"
        )


@guidelines_app.command("docs")
def docs(
    directory: Annotated[Path | None, typer.Argument(help="Guideline directory.")] = None,
    out: Annotated[
        Path, typer.Option(dir_okay=False, help="Where to write the catalogue.")
    ] = REPOSITORY / "docs" / "guidelines.md",
    check_only: Annotated[
        bool, typer.Option("--check", help="Exit 1 if the file is not up to date; write nothing.")
    ] = False,
) -> None:
    """Render the guideline catalogue (docs/guidelines.md) from the rule files."""
    from rules.catalogue import render_catalogue

    text = render_catalogue(load_or_exit(directory or default_guidelines()))
    current = out.read_text(encoding="utf-8") if out.exists() else None
    if check_only:
        if current != text:
            again = " ".join(
                [
                    "vejviser guidelines docs",
                    *([str(directory)] if directory else []),
                    "--out",
                    str(out),
                ]
            )
            raise fail(f"{out} is out of date: run `{again}`", 1)
        typer.echo(f"{out} is up to date.")
        return
    _write_text(out, text)
    typer.echo(f"wrote {out}")


@guidelines_app.command("schema")
def export_schema(
    kind: Annotated[SchemaKind, typer.Option(help="Which file format.")] = SchemaKind.guideline,
    out: Annotated[
        Path | None, typer.Option(dir_okay=False, help="Write to this file instead of stdout.")
    ] = None,
) -> None:
    """Print the JSON Schema of rule files (for editors such as VS Code's YAML extension)."""
    from rules import schema

    model = schema.Guideline if kind is SchemaKind.guideline else schema.ValueSet
    text = json.dumps(model.model_json_schema(by_alias=True), indent=2, ensure_ascii=False)
    if out is None:
        typer.echo(text)
    else:
        _write_text(out, text + "\n")


def _write_text(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise fail(f"cannot write {path}: {exc.strerror}", 1) from None


@guidelines_app.command("status")
def guidelines_status(
    url: Annotated[str, typer.Option(help="Base URL of a running Vejviser service.")],
    token: Annotated[
        str | None,
        typer.Option(envvar="VEJVISER_TOKEN", help="Bearer token (JWT) for the service."),
    ] = None,
    output: Annotated[Format, typer.Option("--format", help="text or json.")] = Format.text,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 10.0,
) -> None:
    """What a running service has published: versions active, dormant and retired, the last
    load, and the errors of a rejected change (exit 1 when a change was rejected)."""
    import httpx2

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    endpoint = url.rstrip("/") + "/guidelines"
    try:
        response = httpx2.get(endpoint, headers=headers, timeout=timeout)
    except httpx2.HTTPError as exc:
        raise fail(f"cannot reach {endpoint}: {exc.__class__.__name__}: {exc}") from None
    if response.status_code == 401:
        raise fail(f"{endpoint} refused the call (401): give a valid --token")
    if response.status_code != 200:
        raise fail(f"{endpoint} answered {response.status_code}: {response.text[:200]}")
    status = response.json()
    if output is Format.json:
        typer.echo(json.dumps(status, indent=2, ensure_ascii=False))
    else:
        typer.echo(status_text(status), nl=False)
    if status.get("rejected") or status.get("source_error"):
        raise typer.Exit(1)


def status_text(status: dict[str, Any]) -> str:
    """``GET /guidelines`` as a readable table."""
    source = status["source"]
    where = source.get("path") if source.get("kind") == "directory" else source.get("url")
    if source.get("kind") == "git":
        where = f"{where} branch {source.get('branch')} commit {source.get('commit')}"
    lines = [
        f"source       {source.get('kind')} {where}",
        f"fingerprint  {status['fingerprint']}",
        f"loaded       {status['loaded_at']} (last check {status['last_checked_at']}, "
        f"every {status['poll_seconds']} s)",
        f"in force     {status['in_force']} version(s) on {status['as_of']}"
        + (f"; next switch {status['next_switch_at']}" if status.get("next_switch_at") else ""),
        "",
        f"{'id':<28} {'version':<8} {'status':<8} {'from':<25} {'until':<25} {'hash':<12}  file",
    ]
    for v in status["versions"]:
        lines.append(
            f"{v['id']:<28} {v['version']:<8} {v['status']:<8} {v['effective_from']:<25} "
            f"{v['effective_until'] or '':<25} {v['content_hash'][:12]:<12}  {v['file']}"
        )
    rejected = status.get("rejected")
    if rejected:
        errors = rejected["errors"]
        lines += [
            "",
            f"REJECTED at {rejected['at']}: {len(errors)} error(s); the versions above stay "
            "in service",
        ]
        lines += [f"  {e}" for e in errors]
    problem = status.get("source_error")
    if problem:
        lines += ["", f"SOURCE UNAVAILABLE since {problem['at']}: {problem['error']}"]
    return "\n".join(lines) + "\n"


@app.command()
def evaluate(
    bundle: Annotated[
        Path, typer.Argument(help="FHIR R4 Bundle, resource list or NDJSON file (gzip too).")
    ],
    as_of: Annotated[
        dt.datetime | None,
        typer.Option(
            formats=["%Y-%m-%d"], metavar="YYYY-MM-DD", help="Reference date (default: today)."
        ),
    ] = None,
    output: Annotated[Format, typer.Option("--format", help="text or json.")] = Format.text,
    language: Annotated[Language, typer.Option(help="Language of texts.")] = Language.da,
    guidelines_dir: GuidelinesDir = None,
) -> None:
    """Explain, per guideline, what applies to the patient(s) in a FHIR file and why."""
    from engine.explain import death_note, explain_text, outcome_json
    from engine.patient import PatientEngine
    from fhir_adapter.bundles import file_bytes

    reference = as_of.date() if as_of else danish_today()
    try:
        result = normalise(read_resources(file_bytes(bundle)))
    except OSError as exc:
        raise fail(f"cannot read {bundle}: {exc.strerror}") from None
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
                    "deceased": death_note(patient, reference, "en") is not None,
                    "guidelines": [outcome_json(o) for o in outcomes],
                }
            )
        else:
            death = death_note(patient, reference, language.value)
            note = f": {death}" if death else ""
            typer.echo(f"Patient/{patient.id} ({reference.isoformat()}){note}\n")
            typer.echo(explain_text(guidelines, outcomes, language.value))
    if output is Format.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")


@app.command()
def synth(
    patients: Annotated[int, typer.Option(min=1, help="Number of patients.")],
    practices: Annotated[int, typer.Option(min=1, help="Number of practices.")],
    clusters: Annotated[int, typer.Option(min=1, help="Number of quality clusters.")],
    seed: Annotated[
        int, typer.Option(help="Random seed: the same seed and --as-of give the same files.")
    ],
    out: Annotated[Path, typer.Option(file_okay=False, help="Directory for the NDJSON files.")],
    as_of: Annotated[
        dt.datetime | None,
        typer.Option(
            formats=["%Y-%m-%d"],
            metavar="YYYY-MM-DD",
            help="Reference date: the data end there (default: today).",
        ),
    ] = None,
) -> None:
    """Write a synthetic Danish GP population as FHIR NDJSON (one file per resource type)."""
    from synth.population import write_population

    reference = as_of.date() if as_of else danish_today()
    try:
        summary = write_population(out, patients, practices, clusters, seed, reference)
    except ValueError as exc:
        raise fail(str(exc)) from None
    typer.echo(summary.report())


SERVER = "From a FHIR server (Bulk Data $export)"


class ExportLevel(StrEnum):
    system = "system"
    patient = "patient"
    group = "group"


@app.command()
def ingest(
    source: Annotated[
        str,
        typer.Argument(
            help="An NDJSON file or a directory of them (*.ndjson, *.ndjson.gz), a FHIR Bundle "
            "(.json, .json.gz) or a directory of them, or a FHIR server base URL."
        ),
    ],
    store: Annotated[
        Path,
        typer.Option(
            file_okay=False, help="Facts store directory (Parquet): created, or updated in place."
        ),
    ],
    workers: Annotated[
        int | None, typer.Option(min=1, help="Processes that parse (default: the cores).")
    ] = None,
    chunk_mb: Annotated[
        int, typer.Option(min=1, help="MB of NDJSON per unit of work (memory per worker).")
    ] = 8,
    memory_limit: Annotated[
        str,
        typer.Option(help="DuckDB memory limit of the SQL step, e.g. 2GB; past it DuckDB spills."),
    ] = "2GB",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
    deleted: Annotated[
        list[Path] | None,
        typer.Option(
            "--deleted",
            help="NDJSON of Bundles with DELETE entries (a Bulk Data export's deleted files), "
            "or a directory of them: those resources leave the store. An export from a server "
            "applies its own.",
        ),
    ] = None,
    level: Annotated[
        ExportLevel,
        typer.Option(
            help="system ($export), patient (Patient/$export) or group.", rich_help_panel=SERVER
        ),
    ] = ExportLevel.system,
    group: Annotated[
        str | None,
        typer.Option(
            help="Group id, for --level group (e.g. a practice's patients).", rich_help_panel=SERVER
        ),
    ] = None,
    resource_types: Annotated[
        list[str] | None,
        typer.Option(
            "--type", help="Resource type to export (repeat; default: all).", rich_help_panel=SERVER
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Only resources changed since this FHIR instant (_since).", rich_help_panel=SERVER
        ),
    ] = None,
    since_last: Annotated[
        bool,
        typer.Option(
            "--since-last",
            help="Only what changed since the last export from this server that went into the store.",
            rich_help_panel=SERVER,
        ),
    ] = False,
    client_id: Annotated[
        str | None,
        typer.Option(
            help="SMART Backend Services client id (with --private-key).", rich_help_panel=SERVER
        ),
    ] = None,
    private_key: Annotated[
        Path | None,
        typer.Option(
            help="PEM file of the client's RSA or EC P-384 key; its password, if any, in "
            "VEJVISER_PRIVATE_KEY_PASSWORD.",
            rich_help_panel=SERVER,
        ),
    ] = None,
    scope: Annotated[
        str, typer.Option(help="Scopes to ask for.", rich_help_panel=SERVER)
    ] = "system/*.rs",
    token_url: Annotated[
        str | None,
        typer.Option(
            help="Token endpoint (default: from .well-known/smart-configuration).",
            rich_help_panel=SERVER,
        ),
    ] = None,
    export_timeout: Annotated[
        float,
        typer.Option(min=1, help="Seconds the whole export may take.", rich_help_panel=SERVER),
    ] = 6 * 3600,
) -> None:
    """Normalise FHIR NDJSON into a facts store; bad lines are quarantined, never dropped.

    Streams in bounded memory on every core. An existing store is updated: resources replace
    those with the same type and id, the rest stay (a re-export never duplicates). See
    docs/ingest.md.

    Given a FHIR server's base URL, a Bulk Data export is made first, in STORE/exports/current:
    an interrupted export or ingest is picked up by running the same command again, and the
    files are removed once they are in the store. Resources the server lists as deleted (an
    export with --since or --since-last) leave the store, as do those of --deleted files.
    Bundle files (Synthea: one per patient) are written out as NDJSON in STORE/bundles first,
    references between entries resolved.
    """
    from engine.population.ingest import (
        ISSUES,
        QUARANTINE,
        IngestInProgressError,
        IngestSettingError,
        check_memory_limit,
        store_lock,
    )
    from engine.population.ingest import ingest as run_ingest
    from engine.population.server_export import record_ingested
    from engine.population.store import StoreError
    from fhir_adapter.bundles import is_bundle_source
    from service.progress import progress_for

    try:
        check_memory_limit(memory_limit)  # before an export or a Bundle conversion, too
    except IngestSettingError as exc:
        raise fail(str(exc)) from None

    request = ServerExport(
        level=level,
        group=group,
        types=tuple(resource_types or ()),
        since=since,
        since_last=since_last,
        client_id=client_id,
        private_key=private_key,
        scope=scope,
        token_url=token_url,
        timeout=export_timeout,
    )
    path = Path(source)
    server = source.startswith(("http://", "https://"))
    exported: str | None = None
    deleted_files = _deleted_files(deleted or [])
    refused = (IngestInProgressError, IngestSettingError, StoreError, FhirInputError)
    if server:
        _check_export_options(request)
    elif request.given():
        raise fail(
            "the export options (--level, --type, --since, --client-id ...) need a server URL"
        )
    elif not path.exists():
        raise fail(f"{source} does not exist")
    kept = None
    try:
        # Held from the export (it writes into STORE/exports/current) or the Bundle conversion
        # (it writes into the store) to the export's record, so a second ingest is refused
        # before it touches either; the ingest takes it again.
        with store_lock(store) as real:
            if server:
                path, exported, from_server = _export(source, real, request, quiet=quiet)
                deleted_files += from_server
            deletions = _deletions(deleted_files)
            if exported is None and is_bundle_source(path):
                path = _bundles_as_ndjson(path, real / "bundles")
            summary = run_ingest(
                path,
                real,
                workers=workers,
                chunk_bytes=chunk_mb << 20,
                progress=progress_for(quiet),
                deleted=deletions,
                memory_limit=memory_limit,
            )
            if exported is not None:
                kept = record_ingested(real, source, exported)
    except refused as exc:
        raise fail(str(exc)) from None
    typer.echo(summary.report())
    if not summary.files and exported is not None:  # its directory is gone by now
        typer.echo(f"the export from {source} has no output files: nothing to ingest", err=True)
    elif not summary.files:
        typer.echo(f"{path} holds no NDJSON files (*.ndjson, *.ndjson.gz)", err=True)
    if path == Path(source) and path.is_dir():
        _say_what_was_not_read(path)
    if summary.quarantined:
        typer.echo(f"quarantined lines, each with its file, line and reason: {store / QUARANTINE}")
    if summary.issues:
        typer.echo(f"resource issues, each with its resource and reason: {store / ISSUES}")
    if kept is not None:
        typer.echo(f"the server's error files are kept in {kept}", err=True)


def _bundles_as_ndjson(source: Path, directory: Path) -> Path:
    """Bundle files written out as NDJSON in ``directory`` (STORE/bundles), which is returned."""
    from fhir_adapter.bundles import write_ndjson

    try:
        typer.echo(write_ndjson(source, directory).report())
    except FhirInputError as exc:
        raise fail(f"cannot read the Bundle {exc}") from None
    except OSError as exc:
        raise fail(f"cannot convert the Bundles: {exc.filename}: {exc.strerror}") from None
    return directory


def _say_what_was_not_read(directory: Path) -> None:
    """A directory's other files are not read (a directory of Bundles is read as such only when
    it holds no NDJSON): say so, rather than leave a stray Bundle out without a word."""
    from engine.population.ingest import ndjson_files

    read = set(ndjson_files(directory))
    others = sorted(
        p.name
        for p in directory.iterdir()
        if p.is_file() and not p.name.startswith(".") and p not in read
    )
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        typer.echo(f"not read, since not NDJSON: {shown}", err=True)


@dataclass(frozen=True)
class ServerExport:
    """The ``ingest`` options that shape an export from a server."""

    level: ExportLevel
    group: str | None
    types: tuple[str, ...]
    since: str | None
    since_last: bool
    client_id: str | None
    private_key: Path | None
    scope: str
    token_url: str | None
    timeout: float

    def given(self) -> bool:
        """Whether any option that only an export uses was set."""
        return bool(
            self.level is not ExportLevel.system or self.group or self.types or self.since
            or self.since_last or self.client_id or self.private_key or self.token_url
        )  # fmt: skip


def _deleted_files(given: list[Path]) -> list[Path]:
    """The ``--deleted`` files: each given file, and the NDJSON files of a given directory
    (``*.ndjson`` and ``*.ndjson.gz``, as the ingest reads a directory)."""
    from engine.population.ingest import ndjson_files

    files = []
    for path in given:
        if path.is_dir():
            files += ndjson_files(path)
        elif path.is_file():
            files.append(path)
        else:
            raise fail(f"{path} does not exist")
    return files


def _deletions(files: list[Path]) -> frozenset[str]:
    """The resources the deleted files name; what cannot be read is said, never skipped."""
    if not files:
        return frozenset()
    from fhir_adapter.bulk import deleted_resources

    try:
        found = deleted_resources(files)
    except (OSError, FhirInputError) as exc:
        raise fail(f"cannot read the deleted files: {exc}") from None
    if found.unreadable:
        typer.echo(
            f"{len(found.unreadable)} line(s) of the deleted files have an entry that names no "
            "resource (Type/id): not applied. " + "; ".join(found.unreadable[:5]),
            err=True,
        )
    return found.names


def _check_export_options(request: ServerExport) -> None:
    """Options that do not go together: refused before the store is locked or a server asked."""
    if (request.level is ExportLevel.group) != (request.group is not None):
        raise fail("--group goes with --level group, and --level group needs --group")
    if request.since and request.since_last:
        raise fail("give --since or --since-last, not both")
    if (request.client_id is None) != (request.private_key is None):
        raise fail("--client-id and --private-key go together")


def _export(
    base_url: str, store: Path, request: ServerExport, *, quiet: bool
) -> tuple[Path, str, list[Path]]:
    """Export into STORE/exports/current (the store locked); returns the directory, the
    transactionTime and the deleted files (of a ``_since`` export from a server that lists
    deletions)."""
    import httpx2

    from engine.population.server_export import current_export, last_transaction_time
    from fhir_adapter.bulk import BulkExportClient, ExportDirectoryInUse
    from fhir_adapter.rest import FhirError

    since = request.since
    if request.since_last:
        try:
            since = last_transaction_time(store, base_url)
        except ValueError as exc:
            raise fail(str(exc)) from None
        if since is None:
            raise fail(
                f"no export from {base_url} has gone into {store} yet: run without --since-last"
            )
    directory = current_export(store)
    with httpx2.Client(timeout=60) as client:
        try:
            auth = _backend_auth(client, base_url, request)
            result = BulkExportClient(client, base_url, auth=auth).export(
                directory,
                level=request.level.value,
                group_id=request.group,
                types=request.types,
                since=since,
                timeout=request.timeout,  # the limit: polling has no count of its own
                on_progress=None if quiet else typer.echo,
            )
        except ExportDirectoryInUse:
            raise fail(
                f"{directory} holds an unfinished export made with other options: run the same "
                "command as then to finish it, or delete that directory to start over"
            ) from None
        except ValueError as exc:  # an option the client rejects (a bad --since, --type, key)
            raise fail(str(exc)) from None
        except FhirError as exc:
            raise fail(f"the export from {base_url} failed: {exc}") from None
    for line in _outcome_report(result):
        typer.echo(line, err=True)
    return directory, result.manifest.transaction_time, result.deleted_files


def _outcome_report(result: ExportResult) -> list[str]:
    """What the export's error files say, by severity: only errors are resources left out."""
    lines = []
    if result.error_count:
        lines.append(
            f"the server reported {result.error_count} error(s): resources it could not export"
        )
    if result.warning_count or result.information_count:
        lines.append(
            f"the server reported {result.warning_count} warning(s) and "
            f"{result.information_count} information message(s) about the export (not errors)"
        )
    return lines


def _backend_auth(
    client: httpx2.Client, base_url: str, request: ServerExport
) -> BackendServicesAuth | None:
    """SMART Backend Services tokens when a client is given; otherwise none are sent."""
    from fhir_adapter.backend_auth import BackendServicesAuth, load_private_key

    if request.client_id is None or request.private_key is None:
        return None
    password = os.environ.get("VEJVISER_PRIVATE_KEY_PASSWORD")
    try:
        key = load_private_key(
            request.private_key.read_bytes(), password.encode() if password else None
        )
    except OSError as exc:
        raise fail(f"cannot read {request.private_key}: {exc.strerror}") from None
    return BackendServicesAuth(
        client,
        fhir_base_url=base_url,
        client_id=request.client_id,
        private_key=key,
        scope=request.scope,
        token_url=request.token_url,
    )


@app.command()
def sweep(
    store: Annotated[Path, typer.Option(help="Facts store directory (Parquet).")],
    as_of: Annotated[
        list[dt.datetime],
        typer.Option(
            formats=["%Y-%m-%d"], metavar="YYYY-MM-DD", help="Reference date; repeat for several."
        ),
    ],
    out: Annotated[Path, typer.Option(file_okay=False, help="Where runs are published.")],
    clusters: Annotated[
        Path | None,
        typer.Option(
            help="CSV with columns practice,cluster (ydernummer; ';' works too), in place of "
            "the store's Organization.partOf."
        ),
    ] = None,
    feedback_database: Annotated[
        Path | None, typer.Option(help="CDS Hooks feedback store: patient exceptions.")
    ] = None,
    suppress_below: Annotated[int, typer.Option(min=1, help="Suppress counts below this.")] = 5,
    language: Annotated[
        Language, typer.Option(help="Language of titles and reasons.")
    ] = Language.da,
    guidelines_dir: GuidelinesDir = None,
    memory_limit: Annotated[
        str,
        typer.Option(help="DuckDB memory limit, e.g. 6GB; past it DuckDB spills to disk."),
    ] = "6GB",
    temp_directory: Annotated[
        Path | None,
        typer.Option(
            file_okay=False,
            help="Where DuckDB keeps its database and spills (default: a temporary directory "
            "under --out, removed afterwards).",
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="DuckDB threads (default: one per core).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
    engine: Annotated[
        SweepEngine,
        typer.Option(help="What runs the SQL steps: DuckDB, or Apache Spark (local, both cores)."),
    ] = SweepEngine.duckdb,
    spark_memory: Annotated[
        str, typer.Option(help="Heap of the local Spark JVM (--engine spark), e.g. 4g.")
    ] = "4g",
) -> None:
    """Evaluate every guideline over a population store: lists, indicators, MeasureReports."""
    import tempfile

    import duckdb

    from engine.population import columnar
    from engine.population.duckdb_engine import configure, sweep_tables
    from engine.population.run import RunInProgressError, run_sweep
    from engine.population.sql import UnsweepableGuidelineError
    from engine.population.store import StoreError, clusters_of, load_store
    from service.progress import Bars, wanted

    guidelines = load_or_exit(guidelines_dir or default_guidelines())
    mapping = _clusters(clusters) if clusters else None
    exceptions = None if feedback_database is None else _exceptions(feedback_database)
    out.mkdir(parents=True, exist_ok=True)
    spills = temp_directory or out
    _remove_killed_spills(spills)
    with (
        tempfile.TemporaryDirectory(prefix=f".duckdb-{os.getpid()}-", dir=spills) as spill,
        duckdb.connect(str(Path(spill) / "sweep.duckdb")) as con,  # evictable tables
        Bars(wanted(quiet)) as bars,
        contextlib.ExitStack() as stack,
    ):
        try:
            configure(con, memory_limit, spill, threads)
        except (ValueError, duckdb.Error) as exc:
            raise fail(f"bad DuckDB setting: {exc}") from None
        bars.task("loading the store", None)
        try:
            snapshot = load_store(con, store, guidelines)
        except StoreError as exc:
            raise fail(str(exc)) from None
        warnings = _date_warnings(
            guidelines, [d.date() for d in as_of], columnar.latest_record(con), danish_today()
        )
        if clusters is not None and mapping is not None:  # the file's map replaces the store's
            warnings += _cluster_warnings(clusters, mapping, columnar.practices(con))
        mapping = mapping or clusters_of(store) or None
        steps = sweep_tables
        if engine is SweepEngine.spark:
            steps = _spark_steps(stack, store, guidelines, Path(spill), spark_memory)
        try:
            manifest = run_sweep(
                con,
                guidelines,
                sorted(d.date() for d in as_of),
                out,
                mapping,
                suppress_below,
                exceptions,
                snapshot=snapshot,
                language=language.value,
                progress=bars,
                sql_steps=steps,
                engine=engine.value,
            )
        except UnsweepableGuidelineError as exc:
            raise fail(f"{exc}; run vejviser guidelines check on the directory") from None
        except RunInProgressError as exc:
            raise fail(f"{exc}: wait for it to finish, it publishes this same run") from None
    if manifest.engine != engine:
        typer.echo(f"(published before, by {manifest.engine}: the same inputs give the same run)")
    typer.echo(f"published {manifest.directory}")
    typer.echo(_published(manifest))
    for warning in warnings:
        typer.echo(warning, err=True)


def _date_warnings(
    guidelines: GuidelineSet, days: list[dt.date], latest: dt.date | None, today: dt.date
) -> list[str]:
    """A run that is published but says little: no guideline in force on a date, a store
    without records, a date after today (the data cannot reach it, so every "no test in 12
    months" list grows)."""
    dates = sorted(set(days))
    warnings = [
        f"warning: no guideline is in force on {day}: that date's lists and rates are empty"
        for day in dates
        if not guidelines.in_force(day)
    ]
    warnings += [
        f"warning: {day} is after today, and the store's latest record is of {latest}: "
        "look-back windows reach past the data, so the lists of missing measurements grow"
        for day in dates
        if day > today
    ]
    if latest is None:
        warnings.append("warning: the store holds no clinical records")
    return warnings


def _remove_killed_spills(directory: Path) -> None:
    """The DuckDB directories (``.duckdb-<pid>-*``: the loaded facts, and what spilled) of sweeps
    that were killed, which a TemporaryDirectory cannot remove; a running sweep's is kept."""
    for spill in directory.glob(".duckdb-*-*"):
        pid = spill.name.split("-")[1]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(spill, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: running all the same
        pass
    return True


def _published(manifest: RunManifest) -> str:
    """What a run holds, date by date, in the words of the files a quality unit opens."""
    guidelines = len({g["id"] for gs in manifest.guidelines.values() for g in gs})
    patients = "" if manifest.patients is None else f"{manifest.patients:,} patient(s) in "
    lines = [
        f"  {patients}{manifest.practices:,} practice(s) and {manifest.clusters:,} cluster(s); "
        f"{guidelines} guideline(s); snapshot {manifest.snapshot}; "
        f"{manifest.exceptions:,} patient exception(s) from CDS feedback"
    ]
    for day in manifest.as_of:
        rows, took = manifest.rows, manifest.timings
        # the MeasureReports are written beside the lists: only the wait for them adds time
        seconds = sum(s for step, s in took.items() if step.startswith(f"{day}/"))
        seconds -= took.get(f"{day}/measure_reports", 0.0)
        lines.append(
            f"  {day}: {rows.get(f'{day}/lists', 0):,} patient list row(s), "
            f"{rows.get(f'{day}/indicators.csv', 0):,} indicator row(s), "
            f"{rows.get(f'{day}/measure_reports', 0):,} MeasureReport(s) in {seconds:.1f} s"
        )
    return "\n".join(lines)


def _spark_steps(
    stack: contextlib.ExitStack,
    store: Path,
    guidelines: GuidelineSet,
    scratch: Path,
    memory: str,
) -> SqlSteps:
    """A local Spark session for the sweep (stopped with ``stack``) and its SQL steps."""
    if not re.fullmatch(r"[1-9][0-9]*[kmgt]", memory, flags=re.IGNORECASE):
        raise fail(f"--spark-memory: {memory!r} is not a JVM heap size such as 4g or 512m")
    try:
        from engine.population import spark_engine
    except ImportError:
        raise fail("Spark is not installed: pip install 'vejviser[spark]'") from None
    spark = spark_engine.local_session("vejviser-sweep", scratch / "spark-local", memory)
    stack.callback(spark.stop)
    spark.sparkContext.setLogLevel("ERROR")
    spark_engine.load_store(spark, store, guidelines)
    return spark_engine.sweep_steps(spark, scratch)


@app.command()
def compare(
    previous: Annotated[
        Path, typer.Argument(help="The earlier run directory, or one of its as-of directories.")
    ],
    current: Annotated[Path, typer.Argument(help="The later run (or as-of) directory.")],
    out: Annotated[
        Path, typer.Option(file_okay=False, help="Where comparison.csv and comparison.md go.")
    ],
    language: Annotated[Language, typer.Option(help="Language of comparison.md.")] = Language.da,
) -> None:
    """Who entered or left each practice's lists and how each indicator moved between two
    sweeps: the 3-, 6- and 12-month follow-up. A run directory stands for its latest date."""
    from engine.population.run import compare as compare_runs
    from engine.population.run import write_comparison

    try:
        report = compare_runs(previous, current)
    except ValueError as exc:
        raise fail(str(exc)) from None
    write_comparison(report, out, language.value)
    entered = sum(c.change == "entered" for c in report.lists)
    typer.echo(
        f"{report.previous} -> {report.current}: {entered} entered and "
        f"{len(report.lists) - entered} left a list; {len(report.indicators)} indicator rows"
    )
    typer.echo(
        f"wrote {out / 'comparison.md'} (counts) and {out / 'comparison.csv'} (names patients: "
        "split it per practice before it leaves the room)"
    )
    for warning in _comparison_warnings(report):
        typer.echo(warning, err=True)


def _comparison_warnings(report: ComparisonReport) -> list[str]:
    """Comparisons that read wrongly without a word: runs given the wrong way round ("entered"
    means left), units in one run only (another cluster map: their rows show no change), a
    guideline in a new version, counts hidden below different thresholds."""
    warnings = []
    if report.previous > report.current:  # ISO dates
        warnings.append(
            f"warning: the first run is of the later date ({report.previous} after "
            f"{report.current}): 'entered' and 'left' are the wrong way round; give the earlier "
            "run first"
        )
    warnings += [
        f"warning: guideline {g} is version {before} in the earlier run and {now} in the later: "
        "its rates and lists may move because the guideline changed"
        for g, before, now in report.new_versions
    ]
    if report.thresholds_differ:
        warnings.append(
            "warning: the runs hide counts below different thresholds "
            f"({' and '.join(map(str, report.suppress_below))}): a count hidden in one run and "
            "shown in the other is no change"
        )
    for level in ("practice", "cluster"):
        alone = sorted(
            {i.id for i in report.indicators if i.level == level}
            - {i.id for i in report.indicators if i.level == level and i.previous and i.current}
        )
        if alone:
            warnings.append(
                f"warning: {len(alone)} {level}(s) in only one of the runs, without a change: "
                f"{_first(alone)} (another {'cluster map' if level == 'cluster' else 'store'}?)"
            )
    return warnings


def _clusters(path: Path) -> dict[str, str]:
    """practice -> cluster from a CSV with the columns practice,cluster (Excel's BOM allowed):
    every row checked, since a row that maps nothing moves a practice out of its cluster's rates
    without a word."""
    import csv

    mapping: dict[str, str] = {}
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = _clusters_reader(path, handle)
            for row in reader:
                where = f"{path}:{reader.line_num}"
                practice, cluster = (row["practice"] or "").strip(), (row["cluster"] or "").strip()
                if None in row or not practice or not cluster:
                    raise fail(f"{where}: a row needs a practice and a cluster, and nothing more")
                if mapping.setdefault(practice, cluster) != cluster:
                    raise fail(f"{where}: practice {practice} is already in another cluster")
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise fail(f"{path} is not UTF-8 text: save it as CSV UTF-8") from None
    except csv.Error as exc:
        raise fail(f"{path}: not a CSV file ({exc})") from None
    if not mapping:
        raise fail(f"{path} maps no practice to a cluster")
    return mapping


def _clusters_reader(path: Path, lines: Iterable[str]) -> csv.DictReader[str]:
    """The clusters file's rows by column name. The separator is the header line's: a comma, or
    the semicolon of Danish Excel's "CSV UTF-8"; spaces around the names are Excel's too. A
    header that is still wrong is shown, since 'the columns must be ...' alone does not say what
    Excel wrote instead."""
    import csv
    import itertools

    rest = iter(lines)
    header = next(rest, "")
    separator = ";" if header.count(";") > header.count(",") else ","
    reader = csv.DictReader(itertools.chain([header], rest), delimiter=separator)
    names = [name.strip() for name in reader.fieldnames or ()]
    if not {"practice", "cluster"} <= set(names):
        first = header.rstrip("\r\n")
        found = f"its first line is {first!r}" if header else "it is empty"
        raise fail(f"{path}: the columns must be practice,cluster (or practice;cluster); {found}")
    reader.fieldnames = names
    return reader


def _cluster_warnings(
    path: Path, mapping: Mapping[str, str], practices: Iterable[str]
) -> list[str]:
    """What a clusters file that only partly fits the store does: it replaces the store's own
    map, so a practice it misses (a mistyped ydernummer, a practice left out) is in no cluster,
    and its cluster's rates lack that practice, silently but for these warnings."""
    store = set(practices)
    unknown = sorted(set(mapping) - store)
    unplaced = sorted(store - set(mapping))
    warnings: list[str] = []
    if not store & set(mapping):
        warnings.append(
            f"warning: no practice of the store is in {path}, so no cluster has rates; "
            "are its ydernumre those of the store's practices?"
        )
    if unknown:
        warnings.append(
            f"warning: {len(unknown)} of the {len(mapping)} practice(s) in {path} are not in "
            f"the store: {_first(unknown)}"
        )
    if unplaced:
        warnings.append(
            f"warning: {len(unplaced)} of the store's {len(store)} practice(s) have no cluster "
            f"in {path} and count in no cluster's rates: {_first(unplaced)}"
        )
    return warnings


def _first(names: Sequence[str], shown: int = 5) -> str:
    """A few names, and how many more: a region's practices would fill the terminal."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _exceptions(path: Path) -> list[PatientException]:
    """The patient exceptions the CDS Hooks service recorded. The file must exist: opening a
    mistyped path would create an empty store and sweep without any exception, silently."""
    import sqlite3

    from service.feedback import FeedbackStore, FeedbackStoreError

    if not path.is_file():
        raise fail(
            f"{path} does not exist: give the feedback database of the CDS Hooks service "
            "(its feedback_database setting)"
        )
    try:
        with FeedbackStore(path) as feedback:
            return feedback.all_exceptions()
    except (sqlite3.DatabaseError, FeedbackStoreError) as exc:
        raise fail(f"{path} cannot be read as a feedback database: {exc}") from None


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=0, max=65535)] = 8080,
    guidelines_dir: GuidelinesDir = None,
    config: Annotated[Path | None, typer.Option(help="YAML settings file.")] = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Accept calls without a JWT (local demos only).")
    ] = False,
    guidelines_git: Annotated[
        str | None,
        typer.Option(help="Serve the guidelines of this git repository (URL or path)."),
    ] = None,
    branch: Annotated[
        str | None, typer.Option(help="Branch of --guidelines-git (default: the settings', main).")
    ] = None,
    guidelines_git_path: Annotated[
        str | None,
        typer.Option(help="Folder of the guidelines inside --guidelines-git (default: its root)."),
    ] = None,
    poll: Annotated[
        float | None,
        typer.Option(
            help="Seconds between checks of the guideline source (0: never; default: the "
            "settings', 5)."
        ),
    ] = None,
) -> None:
    """Run the CDS Hooks service (FastAPI on uvicorn).

    The guideline directory (or git branch) is checked every --poll seconds; a change that loads
    cleanly takes effect at once, a broken one is rejected and the last good set stays in service.
    """
    import uvicorn

    from service.app import create_app
    from service.guideline_source import SourceError, configure_logging
    from service.settings import CONFIG_ENV

    if config is not None:
        os.environ[CONFIG_ENV] = str(config)
    overrides: dict[str, object] = {}
    if guidelines_dir is not None:
        overrides["guidelines"] = guidelines_dir
    if guidelines_git is not None:
        overrides["guidelines_git"] = guidelines_git
    if branch is not None:
        overrides["guidelines_branch"] = branch
    if guidelines_git_path is not None:
        overrides["guidelines_git_path"] = guidelines_git_path
    if poll is not None:
        overrides["guidelines_poll_seconds"] = poll
    settings = _settings(overrides)
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
    _check_feedback_database(settings.feedback_database)
    configure_logging()
    try:
        application = create_app(settings)
    except RuleFileError as exc:
        for error in exc.errors:
            typer.echo(str(error), err=True)
        raise typer.Exit(1) from None
    except SourceError as exc:
        raise fail(str(exc), 1) from None
    # log_config=None: uvicorn keeps the JSON handler configure_logging gave its loggers
    uvicorn.run(
        application, host=host, port=port, log_level="info", access_log=False, log_config=None
    )


def _check_feedback_database(path: Path) -> None:
    """Open the store once before uvicorn starts: a path it cannot write (no such folder, not a
    database, read-only, a disk full) stops ``serve`` in words, not with a traceback after
    uvicorn announced its start."""
    import sqlite3

    from service.feedback import FeedbackStore, FeedbackStoreError

    try:
        FeedbackStore(path).close()
    except (sqlite3.Error, FeedbackStoreError) as exc:
        raise fail(
            f"the feedback database {path} cannot be used: {exc} (feedback_database must be a "
            "writable SQLite file, or a new file in a writable folder that exists)",
            1,
        ) from None


def _settings(overrides: dict[str, object]) -> Settings:
    """The service's settings, with what is wrong in the file or the environment in words."""
    import yaml
    from pydantic import ValidationError

    from service.settings import Settings

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise fail(f"invalid settings: {problems}", 1) from None
    except yaml.YAMLError as exc:
        raise fail(f"the settings file is not valid YAML: {exc}", 1) from None
    except ValueError as exc:
        raise fail(str(exc), 1) from None


EXAMPLES = REPOSITORY / "examples"
DEMO_AS_OF = dt.date(2026, 7, 2)


@app.command()
def demo(
    language: Annotated[Language, typer.Option(help="Language of texts.")] = Language.da,
    patients: Annotated[int, typer.Option(help="Synthetic patients.", min=1)] = 3000,
    out: Annotated[
        Path | None, typer.Option(file_okay=False, help="Where the demo's store and sweeps go.")
    ] = None,
) -> None:
    """The library's test cases, a synthetic population, the example patients, a CDS Hooks call."""
    from engine.cases import run_cases
    from engine.explain import explain_text
    from engine.patient import PatientEngine
    from service.demo import population_sweep, service_call, shifted

    guidelines = load_or_exit(default_guidelines())
    results = run_cases(guidelines)
    failed = [r for r in results if not r.passed]
    typer.echo(
        f"== 1. Guideline library: {len(guidelines.files)} guidelines, {len(results)} test cases, "
        f"{len(failed)} failed.\n"
    )
    typer.echo("== 2. A synthetic population (seed 2026): generated, ingested and swept\n")
    sweep_dir = Path(out or REPOSITORY / "out" / "demo")
    typer.echo(population_sweep(guidelines, patients, 2026, danish_today(), sweep_dir) + "\n")
    engine = PatientEngine(guidelines)
    for path in sorted(EXAMPLES.glob("*.json")):
        for patient in normalise(read_resources(path.read_bytes())).values():
            typer.echo(f"== 3. {path.name}: Patient/{patient.id}, reference date {DEMO_AS_OF}\n")
            outcomes = [o for o in engine.evaluate(patient, DEMO_AS_OF) if o.in_register]
            typer.echo(explain_text(guidelines, outcomes, language.value))
    example = EXAMPLES / "ihd-diabetes.json"
    bundle = shifted(example.read_text(encoding="utf-8"), (danish_today() - DEMO_AS_OF).days)
    typer.echo("== 4. The CDS Hooks service (uvicorn, --no-auth) answers patient-view for it:\n")
    for card in service_call(bundle, "inge", language.value):
        typer.echo(
            f"  [{card['indicator']}] {card['summary']}\n      source: {card['source']['label']}"
        )
    if failed:
        raise typer.Exit(1)


@conformance_app.command("cds-hooks")
def cds_hooks_conformance(
    base_url: Annotated[
        str, typer.Option(help="Base URL of the service: the part before /cds-services.")
    ],
    service_id: Annotated[
        str | None,
        typer.Option(help="Service to call (default: the first patient-view service)."),
    ] = None,
    private_key: Annotated[
        Path | None,
        typer.Option(
            help="PEM private key the service trusts; with --kid and --iss it signs JWTs."
        ),
    ] = None,
    kid: Annotated[str | None, typer.Option(help="Key id the service knows the key by.")] = None,
    iss: Annotated[str | None, typer.Option(help="Issuer the service trusts the key for.")] = None,
    patient_bundle: Annotated[
        Path | None,
        typer.Option(help="FHIR Bundle with one patient (default: the shipped test patient)."),
    ] = None,
    cors_origin: Annotated[
        str | None,
        typer.Option(help="An Origin the service allows; without it CORS is only probed."),
    ] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds allowed per request.")] = 10.0,
    output: Annotated[Format, typer.Option("--format", help="text or json.")] = Format.text,
) -> None:
    """Check a CDS Hooks 2.0 service against the checklist (exit 1 if any check fails).

    JWT checks run only with --private-key, --kid and --iss; without them they are reported
    as not run, never as passed.
    """
    from urllib.parse import urlsplit

    from conformance.cds_hooks.client import Signer, SigningKeyError
    from conformance.cds_hooks.fixture import FixtureError
    from conformance.cds_hooks.suite import SuiteConfig, run_suite, to_json, to_text

    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
        raise fail(f"--base-url must be an absolute http(s) URL, got {base_url!r}")
    given = [private_key is not None, kid is not None, iss is not None]
    if any(given) and not all(given):
        raise fail("--private-key, --kid and --iss go together: give all three or none")
    signer = None
    if private_key is not None and kid is not None and iss is not None:
        try:
            signer = Signer.from_pem(private_key, kid, iss)
        except SigningKeyError as exc:
            raise fail(str(exc)) from None
    config = SuiteConfig(
        base_url=base_url.rstrip("/"),
        service_id=service_id,
        signer=signer,
        patient_bundle=patient_bundle,
        cors_origin=cors_origin,
        timeout=timeout,
    )
    try:
        results = run_suite(config)
    except FixtureError as exc:
        raise fail(str(exc)) from None
    if output is Format.json:
        sys.stdout.write(to_json(results, config.base_url) + "\n")
    else:
        typer.echo(to_text(results))
    if any(result.status == "failed" for result in results):
        raise typer.Exit(1)


@guidelines_app.command("diff")
def diff(
    old: Annotated[Path, typer.Argument(help="Guideline directory as published now.")],
    new: Annotated[Path, typer.Argument(help="Guideline directory about to be published.")],
    store: Annotated[Path, typer.Option(help="Facts store directory (Parquet).")],
    as_of: Annotated[
        dt.datetime,
        typer.Option(
            formats=["%Y-%m-%d"], metavar="YYYY-MM-DD", help="Reference date of both sweeps."
        ),
    ],
    output: Annotated[Format, typer.Option("--format", help="text or json.")] = Format.text,
    language: Annotated[Language, typer.Option(help="Language of indicator titles.")] = Language.da,
) -> None:
    """Impact before publishing: who enters or leaves each list, and how indicators move.

    Both sets are evaluated over the same store on the same date. The report names patients in
    its per-practice sections: it is for the guideline author or quality unit with access to the
    store, not for sharing.
    """
    import duckdb

    from engine.population.duckdb_engine import sweep as sweep_store
    from engine.population.impact import impact, impact_json, impact_text
    from engine.population.store import StoreError, clusters_of, load_store

    reference = as_of.date()
    sets = (load_or_exit(old), load_or_exit(new))
    outcomes = []
    for guidelines in sets:
        with duckdb.connect() as con:  # a fresh connection: sweep tables are per connection
            try:
                load_store(con, store, guidelines)
            except StoreError as exc:
                raise fail(str(exc)) from None
            outcomes.append(list(sweep_store(con, guidelines, reference)))
    report = impact(
        outcomes[0],
        outcomes[1],
        sets[0].in_force(reference),
        sets[1].in_force(reference),
        reference,
        clusters_of(store),
        old_name=str(old),
        new_name=str(new),
        language=language.value,
    )
    if output is Format.json:
        sys.stdout.write(orjson.dumps(impact_json(report), option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    else:
        typer.echo(impact_text(report), nl=False)
