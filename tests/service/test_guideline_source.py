"""The guideline publisher: snapshots, sources (directory and git), validation, status and logs.

The clock is injected, so switching moments are tested without sleeping. The end-to-end test
under load, with a real server, is tests/service/test_live_guidelines.py.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from rules.effective import danish_today
from rules.errors import RuleFileError
from rules.guideline_set import load_guidelines
from service.app import create_app
from service.auth import AuthSettings, TrustedIssuer
from service.cds_hooks.prefetch import prefetch_from
from service.guideline_source import (
    SERVICE_LOGGERS,
    Checkout,
    DirectorySource,
    GitSource,
    GuidelinePublisher,
    JsonFormatter,
    Snapshot,
    SourceError,
    configure_logging,
    log,
    redact,
    safe_url,
    version_status,
)
from service.settings import Settings
from tests.conftest import FIXTURE_GUIDELINES
from tests.support.live_service import diabetic_patient, git, retargeted

T0 = dt.datetime(2026, 6, 1, 10, 0, tzinfo=dt.UTC)
EFFECTIVE = "effective: {from: 2020-01-01}"


class Clock:
    def __init__(self, now: dt.datetime = T0) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def add_version(directory: Path, version: str, effective: str, name: str | None = None) -> Path:
    """A copy of the fixture guideline as another version with another effective period."""
    text = (FIXTURE_GUIDELINES / "example.yaml").read_text(encoding="utf-8")
    path = directory / (name or f"example-{version}.yaml")
    path.write_text(
        text.replace("version: 1.0.0", f"version: {version}").replace(EFFECTIVE, effective),
        encoding="utf-8",
    )
    return path


def end_first_version(directory: Path, until: str) -> None:
    path = directory / "example.yaml"
    path.write_text(
        path.read_text().replace(EFFECTIVE, f"effective: {{from: 2020-01-01, until: {until}}}")
    )


# --- snapshots and moments -------------------------------------------------------------------


def test_a_dormant_version_switches_on_at_its_moment_without_a_reload(guideline_dir: Path) -> None:
    end_first_version(guideline_dir, "2026-06-01T10:00:03Z")
    add_version(guideline_dir, "2.0.0", "effective: {from: 2026-06-01T10:00:03Z}")
    clock = Clock()
    publisher = GuidelinePublisher(DirectorySource(guideline_dir), clock=clock)
    snapshot, now = publisher.current()
    assert [g.version for g in snapshot.in_force_at(now)] == ["1.0.0"]
    statuses = {v["version"]: v["status"] for v in publisher.status()["versions"]}
    assert statuses == {"1.0.0": "active", "2.0.0": "dormant"}
    assert publisher.status()["next_switch_at"] == "2026-06-01T10:00:03.000+00:00"

    clock.now = T0 + dt.timedelta(seconds=3)
    assert publisher.refresh() == "unchanged"
    snapshot_after, now = publisher.current()
    assert snapshot_after is snapshot  # the same snapshot: no reload was needed
    assert [g.version for g in snapshot.in_force_at(now)] == ["2.0.0"]
    statuses = {v["version"]: v["status"] for v in publisher.status()["versions"]}
    assert statuses == {"1.0.0": "retired", "2.0.0": "active"}
    assert publisher.status()["next_switch_at"] is None


def test_the_in_force_tuple_is_cached_between_switches(guideline_dir: Path) -> None:
    end_first_version(guideline_dir, "2026-09-01")
    add_version(guideline_dir, "2.0.0", "effective: {from: 2026-09-01}")
    add_version(
        guideline_dir, "0.9.0", "effective: {from: 2018-01-01}\nstatus: draft", "draft.yaml"
    )
    snapshot = Snapshot(load_guidelines(guideline_dir), "fp", T0)
    first = snapshot.in_force_at(T0)
    assert snapshot.in_force_at(T0 + dt.timedelta(days=30)) is first  # no recomputation
    switch = dt.datetime(2026, 8, 31, 22, tzinfo=dt.UTC)  # midnight in Denmark
    assert snapshot.switches == (dt.datetime(2019, 12, 31, 23, tzinfo=dt.UTC), switch)
    later = snapshot.in_force_at(switch)
    assert [g.version for g in later] == ["2.0.0"]
    assert snapshot.in_force_at(switch + dt.timedelta(days=400)) is later
    assert [g.version for g in snapshot.in_force_at(switch - dt.timedelta(seconds=1))] == ["1.0.0"]
    assert snapshot.in_force_at(dt.datetime(2019, 1, 1, tzinfo=dt.UTC)) == ()
    draft = next(g for g in snapshot.guidelines.guidelines if g.version == "0.9.0")
    assert version_status(draft, T0) == "draft"


# --- changes: validated whole, swapped atomically ----------------------------------------------


def test_a_change_is_swapped_in_and_a_held_snapshot_is_untouched(guideline_dir: Path) -> None:
    publisher = GuidelinePublisher(DirectorySource(guideline_dir), clock=Clock())
    in_flight, _ = publisher.current()
    old_hash = in_flight.guidelines.guidelines[0].content_hash
    assert publisher.refresh() == "unchanged"
    path = guideline_dir / "example.yaml"
    path.write_text(retargeted(path.read_text(), 54))
    assert publisher.refresh() == "swapped"
    assert publisher.snapshot is not in_flight
    assert publisher.snapshot.guidelines.guidelines[0].content_hash != old_hash
    # A request that started before the swap still sees its own set, whole.
    assert in_flight.guidelines.guidelines[0].content_hash == old_hash
    assert in_flight.engine.guidelines is in_flight.guidelines
    assert publisher.swaps == 2 and publisher.rejections == 0


def test_a_broken_change_is_rejected_whole_and_reported(guideline_dir: Path) -> None:
    end_first_version(guideline_dir, "2027-01-01")
    clock = Clock()
    publisher = GuidelinePublisher(DirectorySource(guideline_dir), clock=clock)
    good = publisher.snapshot
    add_version(guideline_dir, "2.0.0", "effective: {from: 2027-01-01}", "new.yaml")
    path = guideline_dir / "example.yaml"
    original = path.read_text()
    path.write_text(original.replace("when: t2d and age >= 18", "when: t2d and agee >= 18"))
    clock.now = T0 + dt.timedelta(seconds=1)
    assert publisher.refresh() == "rejected"
    assert publisher.snapshot is good  # neither the broken file nor the good new one took effect
    status = publisher.status()
    assert status["fingerprint"] == good.fingerprint
    assert status["rejected"]["at"] == "2026-06-01T10:00:01.000+00:00"
    (error,) = status["rejected"]["errors"]
    assert "example.yaml:" in error and "unknown fact 'agee'" in error
    assert [v["version"] for v in status["versions"]] == ["1.0.0"]
    # The same broken state is not loaded again on every poll.
    assert publisher.refresh() == "unchanged" and publisher.loads == 2

    path.write_text(original)
    clock.now = T0 + dt.timedelta(seconds=2)
    assert publisher.refresh() == "swapped"
    status = publisher.status()
    assert status["rejected"] is None
    assert [v["version"] for v in status["versions"]] == ["1.0.0", "2.0.0"]


def test_a_change_whose_test_cases_fail_is_rejected(guideline_dir: Path) -> None:
    """The set's own cases are part of its validity: a target moved without its case stays out."""
    publisher = GuidelinePublisher(DirectorySource(guideline_dir), clock=Clock())
    good = publisher.snapshot
    path = guideline_dir / "example.yaml"
    original = path.read_text()
    path.write_text(original.replace("value: 53\n", "value: 66\n"))  # the case still says 53
    assert publisher.refresh() == "rejected"
    assert publisher.snapshot is good
    (error,) = publisher.status()["rejected"]["errors"]
    assert re.fullmatch(
        r".*example\.yaml:\d+:\d+: test 'above the default target' failed: .*hba1c_target.*", error
    )
    assert "53" in error and "66" in error

    path.write_text(retargeted(original, 66))  # the target and its case, together
    assert publisher.refresh() == "swapped"
    assert publisher.status()["rejected"] is None
    assert publisher.snapshot.guidelines.guidelines[0].targets[0].cases[-1].value == 66


def test_reverting_a_rejected_change_clears_the_report(guideline_dir: Path) -> None:
    publisher = GuidelinePublisher(DirectorySource(guideline_dir), clock=Clock())
    path = guideline_dir / "example.yaml"
    original = path.read_text()
    path.write_text(original + "\n  broken: [\n")
    assert publisher.refresh() == "rejected"
    assert publisher.status()["rejected"] is not None
    path.write_text(original)
    assert publisher.refresh() == "unchanged"
    assert publisher.status()["rejected"] is None


def test_files_changing_while_they_are_read_are_loaded_again(guideline_dir: Path) -> None:
    path = guideline_dir / "example.yaml"
    original = path.read_text()

    class Busy(DirectorySource):
        """An author still saving: ``lies`` answers to ``current`` see a later state, and a
        checkout may find one more save just before it reads."""

        settle_seconds = 0.0

        def __init__(self, directory: Path) -> None:
            super().__init__(directory)
            self.answers: list[bool] = []
            self.save_before_checkout: str | None = None

        def current(self) -> str:
            fingerprint = super().current()
            return fingerprint + "-later" if self.answers and self.answers.pop(0) else fingerprint

        def checkout(self) -> Checkout:
            if self.save_before_checkout is not None:
                path.write_text(self.save_before_checkout)
                self.save_before_checkout = None
            return super().checkout()

    source = Busy(guideline_dir)
    publisher = GuidelinePublisher(source, clock=Clock())
    served = publisher.snapshot

    # Saved again between the check and the load: not loaded, tried again on the next poll.
    path.write_text(retargeted(original, 54))
    source.save_before_checkout = retargeted(original, 55)
    assert publisher.refresh() == "retry"
    assert publisher.snapshot is served

    # Saved again while being read: the state after the load differs, so it is not served.
    source.answers = [False, True]
    assert publisher.refresh() == "retry"
    assert publisher.snapshot is served and publisher.status()["rejected"] is None

    assert publisher.refresh() == "swapped"
    assert publisher.snapshot.guidelines.guidelines[0].targets[0].cases[-1].value == 55


@pytest.mark.parametrize(
    ("before", "after", "message"),
    [
        ("version: 1.0.0", "version: one", "version"),
        ("targets: {hba1c_target: 53}", "targets: {hba1c_target: 54}", "test 'above the default"),
    ],
)
def test_the_first_load_must_succeed(
    guideline_dir: Path, before: str, after: str, message: str
) -> None:
    path = guideline_dir / "example.yaml"
    path.write_text(path.read_text().replace(before, after))
    with pytest.raises(RuleFileError, match=message):
        GuidelinePublisher(DirectorySource(guideline_dir))


def test_a_missing_directory_is_reported_and_the_set_stays(guideline_dir: Path) -> None:
    publisher = GuidelinePublisher(DirectorySource(guideline_dir), clock=Clock())
    moved = guideline_dir.with_name("elsewhere")
    guideline_dir.rename(moved)
    assert publisher.refresh() == "unavailable"
    assert "is not a directory" in publisher.status()["source_error"]["error"]
    moved.rename(guideline_dir)
    assert publisher.refresh() == "unchanged"
    assert publisher.status()["source_error"] is None


def test_an_empty_directory_is_no_guideline_set(guideline_dir: Path) -> None:
    """Found by QA (ops): serve started on an empty folder (a mount not there yet) and said
    ready with 0 guidelines; a publication that emptied the folder was swapped in, and every
    chart got no cards, as if all were well."""
    publisher = GuidelinePublisher(DirectorySource(guideline_dir), clock=Clock())
    serving = publisher.snapshot
    for path in guideline_dir.rglob("*.yaml"):
        path.unlink()
    assert publisher.refresh() == "rejected"
    assert publisher.snapshot is serving
    (error,) = publisher.status()["rejected"]["errors"]
    assert error == f"{guideline_dir}: holds no guideline (rule files are *.yaml): nothing to serve"
    with pytest.raises(RuleFileError, match="holds no guideline"):
        GuidelinePublisher(DirectorySource(guideline_dir))


# --- structured logs ---------------------------------------------------------------------------


def test_every_load_swap_and_rejection_is_one_json_line(guideline_dir: Path) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        publisher = GuidelinePublisher(DirectorySource(guideline_dir), clock=Clock())
        path = guideline_dir / "example.yaml"
        path.write_text(path.read_text().replace("version: 1.0.0", "version: x"))
        publisher.refresh()
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == [
        "guidelines.load",
        "guidelines.swap",
        "guidelines.load",
        "guidelines.rejected",
    ]
    swap, rejected = lines[1], lines[3]
    assert swap["guidelines"] == 1 and swap["valuesets"] == 6 and swap["in_force"] == 1
    assert swap["source"] == {"kind": "directory", "path": str(guideline_dir)}
    assert isinstance(swap["duration_ms"], float) and swap["fingerprint"]
    assert rejected["level"] == "warning" and rejected["error_count"] == 1
    assert "example.yaml:3:10: " in rejected["errors"][0]
    assert rejected["serving"] == swap["fingerprint"]


@contextlib.contextmanager
def service_logging(stream: io.StringIO) -> Iterator[None]:
    """configure_logging for one test, undone afterwards (the loggers are process-wide)."""
    loggers = [logging.getLogger(name) for name in SERVICE_LOGGERS]
    before = [(list(lg.handlers), lg.level) for lg in loggers]
    try:
        configure_logging(stream)
        yield
    finally:
        for lg, (handlers, level) in zip(loggers, before, strict=True):
            for handler in lg.handlers[len(handlers) :]:
                lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = True


def test_configure_logging_is_idempotent() -> None:
    before = list(log.handlers)
    with service_logging(io.StringIO()):
        configure_logging(io.StringIO())
        assert len(log.handlers) == len(before) + 1


def test_the_reason_a_client_was_refused_reaches_the_log() -> None:
    """Found by QA: service.auth logs the reason at INFO, and no handler wrote it: every refused
    token was a bare 401 in the service's log too."""
    stream = io.StringIO()
    with service_logging(stream):
        logging.getLogger("service.auth").info("client authentication failed: reason=expired")
        logging.getLogger("service.feedback").debug("not at INFO: not written")
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert (record["level"], record["logger"]) == ("info", "service.auth")
    assert record["message"] == "client authentication failed: reason=expired"


# --- git ---------------------------------------------------------------------------------------


@pytest.fixture
def repository(tmp_path: Path, guideline_dir: Path) -> Iterator[tuple[Path, Path]]:
    """A bare repository (the published guidelines) and a clone an author works in."""
    bare = tmp_path / "published.git"
    git("init", "--bare", "--quiet", "--initial-branch=main", str(bare))
    work = tmp_path / "author"
    git("clone", "--quiet", str(bare), str(work))
    git("checkout", "--quiet", "-b", "main", cwd=work)
    shutil.copytree(guideline_dir, work / "guidelines")
    git("add", ".", cwd=work)
    git("commit", "--quiet", "-m", "first", cwd=work)
    git("push", "--quiet", "origin", "main", cwd=work)
    yield bare, work


def test_a_pushed_commit_is_served_and_a_broken_one_is_not(
    repository: tuple[Path, Path], tmp_path: Path
) -> None:
    bare, work = repository
    source = GitSource(f"file://{bare}", "main", tmp_path / "state", "guidelines")
    publisher = GuidelinePublisher(source, clock=Clock())
    first = git("rev-parse", "HEAD", cwd=work)
    status = publisher.status()
    assert status["source"] == {
        "kind": "git",
        "url": f"file://{bare}",
        "branch": "main",
        "path": "guidelines",
        "commit": first,
    }
    assert status["fingerprint"] == first
    assert status["versions"][0]["file"] == "example.yaml"  # inside the repository
    assert publisher.refresh() == "unchanged"

    rule = work / "guidelines" / "example.yaml"
    rule.write_text(retargeted(rule.read_text(), 55))
    git("commit", "--quiet", "-am", "target 55", cwd=work)
    git("push", "--quiet", "origin", "main", cwd=work)
    second = git("rev-parse", "HEAD", cwd=work)
    assert publisher.refresh() == "swapped"
    assert publisher.status()["source"]["commit"] == second
    target = publisher.snapshot.guidelines.guidelines[0].targets[0]
    assert target.cases[-1].value == 55

    rule.write_text(rule.read_text().replace("version: 1.0.0", "version: oops"))
    git("commit", "--quiet", "-am", "broken", cwd=work)
    git("push", "--quiet", "origin", "main", cwd=work)
    assert publisher.refresh() == "rejected"
    rejected = publisher.status()["rejected"]
    assert rejected["commit"] == git("rev-parse", "HEAD", cwd=work)
    assert rejected["errors"][0].startswith("example.yaml:3:10: ")
    assert publisher.status()["source"]["commit"] == second
    # Old exports are pruned: at most two commits are kept on disk.
    assert len(list((source.root / "commits").iterdir())) <= GitSource.KEEP


def test_an_unreachable_repository_keeps_the_set_and_hides_credentials(
    repository: tuple[Path, Path], tmp_path: Path
) -> None:
    bare, _ = repository
    source = GitSource(str(bare), "main", tmp_path / "state", "guidelines")
    publisher = GuidelinePublisher(source, clock=Clock())
    serving = publisher.snapshot
    source.url = "https://reader:s3cret@127.0.0.1:9/guidelines.git"
    assert publisher.refresh() == "unavailable"
    assert publisher.snapshot is serving
    problem = publisher.status()["source_error"]["error"]
    assert "s3cret" not in problem and "reader" not in problem
    assert "s3cret" not in json.dumps(publisher.status())
    with pytest.raises(SourceError):
        GitSource(str(tmp_path / "nowhere.git"), "main", tmp_path / "state2").checkout()


def test_credentials_never_reach_a_status_or_a_log() -> None:
    assert (
        safe_url("https://user:token@git.example.dk/rules.git")
        == "https://git.example.dk/rules.git"
    )
    assert safe_url("/srv/rules.git") == "/srv/rules.git"
    assert redact("fatal: unable to access 'https://u:p@h/r.git/'") == (
        "fatal: unable to access 'https://h/r.git/'"
    )
    source = GitSource("https://user:token@git.example.dk/rules.git", "main", Path("/tmp/x"))
    assert "token" not in json.dumps(source.describe())


# --- the service -------------------------------------------------------------------------------


def make_client(tmp_path: Path, guidelines: Path, auth: bool = False) -> TestClient:
    issuers = (
        [TrustedIssuer(iss="https://ehr.example.dk", jwks_url="https://ehr.example.dk/jwks")]
        if auth
        else []
    )
    settings = Settings(
        guidelines=guidelines,
        auth=AuthSettings(enabled=auth, issuers=issuers),
        feedback_database=tmp_path / "feedback.sqlite",
        guidelines_poll_seconds=0,
    )
    return TestClient(create_app(settings))


def test_status_endpoint_and_discovery_follow_the_snapshot(
    tmp_path: Path, guideline_dir: Path
) -> None:
    with make_client(tmp_path, guideline_dir) as client:
        publisher: GuidelinePublisher = client.app.state.publisher  # type: ignore[attr-defined]
        status = client.get("/guidelines").json()
        assert status["source"]["kind"] == "directory"
        assert [(v["id"], v["status"]) for v in status["versions"]] == [("example-hba1c", "active")]
        version = status["versions"][0]
        assert version["content_hash"] == publisher.snapshot.guidelines.guidelines[0].content_hash
        assert version["effective_from"] == "2020-01-01" and version["effective_until"] is None
        before = client.get("/cds-services").json()["services"][0]["prefetch"]
        assert "observations" not in before and "observations1" in before

        # The guideline is retired: nothing in force, so discovery asks for no observation codes.
        end_first_version(guideline_dir, "2021-01-01")
        assert publisher.refresh() == "swapped"
        after = client.get("/cds-services").json()["services"][0]["prefetch"]
        assert "combo-code" not in after["observations1"]
        assert client.get("/ready").json()["guidelines_in_force"] == 0
        status = client.get("/guidelines").json()
        assert status["versions"][0]["status"] == "retired"
        assert status["last_swap_at"] >= status["loaded_at"]


def test_cards_come_from_the_versions_in_force_now(tmp_path: Path, guideline_dir: Path) -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    end_first_version(guideline_dir, later.isoformat())
    with make_client(tmp_path, guideline_dir) as client:
        templates = client.get("/cds-services").json()["services"][0]["prefetch"]
        body = {
            "hook": "patient-view",
            "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
            "context": {"userId": "Practitioner/gp1", "patientId": "p1"},
            "prefetch": prefetch_from(templates, diabetic_patient(danish_today())),
        }
        cards = client.post("/cds-services/vejviser-patient-view", json=body).json()["cards"]
        assert {c["extension"]["dk.vejviser.provenance"]["version"] for c in cards} == {"1.0.0"}
        publisher: GuidelinePublisher = client.app.state.publisher  # type: ignore[attr-defined]
        publisher.clock = lambda: later
        body["hookInstance"] = "2b0a4a65-3c1c-4d0e-8f43-3e1b0f8c7a10"
        assert client.post("/cds-services/vejviser-patient-view", json=body).json() == {"cards": []}


def test_the_status_endpoint_needs_the_same_auth(tmp_path: Path, guideline_dir: Path) -> None:
    with make_client(tmp_path, guideline_dir, auth=True) as client:
        assert client.get("/guidelines").status_code == 401
        assert client.get("/health").status_code == 200
