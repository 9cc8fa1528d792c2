"""Publishing under load: rule files edited, added, broken and removed under a running server.

A real ``vejviser serve`` (uvicorn subprocess, poll interval 0.5 s) serves a copy of the test
guideline set while four clients send patient-view requests back to back. Each change must show
up within the poll interval (plus the time to load), a broken file must never take effect, and
not one request may fail, before, during or after any swap.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rules.effective import danish_today
from service.cli import app
from tests.conftest import FIXTURE_GUIDELINES
from tests.support.live_service import (
    Answer,
    LoadGenerator,
    VejviserProcess,
    diabetic_patient,
    full_prefetch,
    git,
    retargeted,
    running,
    wait_for,
)
from tests.support.sekmet import free_port

POLL = 0.5
SEEN_WITHIN = POLL + 2.5  # a poll interval, the load, and a scheduling margin on a busy CI box

SECOND = """\
# A second test guideline, added while the service runs.
id: example-second
version: 1.0.0
title: {da: Andet eksempel, en: Second example}
publisher: Vejviser tests
description: {da: Testvejledning, en: Test guideline}
sources:
  - {title: "DSAM type 2-diabetes", url: "https://vejledninger.dsam.dk/type2/", date: 2019-01-01}
effective: {from: EFFECTIVE}
register:
  description: {da: Type 2-diabetes, en: Type 2 diabetes}
  when: t2d
facts:
  t2d: {condition_present: {valueset: t2d}}
  hba1c: {latest_observation: {valueset: hba1c, within: 12 months}}
recommendations:
  - id: high
    when: WHEN
    indicator: info
    summary: {da: "SUMMARY {hba1c.value}", en: "SUMMARY {hba1c.value}"}
"""


def second(
    summary: str = "Andet eksempel", when: str = "hba1c.value > 60 'mmol/mol'", effective: str = ""
) -> str:
    return (
        SECOND.replace("SUMMARY", summary)
        .replace("WHEN", when)
        .replace("EFFECTIVE", effective or "2020-01-01")
    )


def publish(path: Path, text: str) -> None:
    """Write a rule file the way a publisher should: whole, by renaming a finished file into place
    (the service also waits for a change to hold still, see test_guideline_source.py)."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def summaries(answer: Answer) -> set[str]:
    return {card["summary"] for card in answer.cards}


def guidelines_of(answer: Answer) -> set[str]:
    return {card["extension"]["dk.vejviser.provenance"]["guideline"] for card in answer.cards}


@pytest.fixture
def library(tmp_path: Path) -> Path:
    target = tmp_path / "guidelines"
    shutil.copytree(FIXTURE_GUIDELINES, target)
    return target


@pytest.fixture
def server(tmp_path: Path, library: Path) -> Iterator[VejviserProcess]:
    with running(VejviserProcess(tmp_path, "--guidelines", str(library), poll=POLL)) as process:
        yield process


def change_shows(
    load: LoadGenerator,
    changed_at: float,
    shows: Callable[[Answer], bool],
    *,
    timeout: float = SEEN_WITHIN,
) -> Answer:
    """The first answer to a request sent after ``changed_at`` for which ``shows(answer)``; every
    request sent after that answer arrived shows the change too (the swap is atomic)."""

    def first() -> Answer | None:
        return next((a for a in load.since(changed_at) if a.cards and shows(a)), None)

    answer, _ = wait_for(first, timeout)
    assert answer.sent - changed_at <= timeout
    time.sleep(0.3)  # let a few more answers arrive
    later = [a for a in load.since(answer.received) if a.problem is None]
    assert later, "no answers after the change"
    assert all(shows(a) for a in later), "an answer after the swap came from the old set"
    return answer


def test_changes_take_effect_under_load_and_a_broken_file_never_does(
    server: VejviserProcess, library: Path
) -> None:
    today = danish_today()
    prefetch = full_prefetch(server.base_url, diabetic_patient(today))
    example = library / "example.yaml"
    original = example.read_text(encoding="utf-8")
    added = library / "example-second.yaml"
    initial = server.status()
    assert [(v["id"], v["status"]) for v in initial["versions"]] == [("example-hba1c", "active")]
    assert initial["rejected"] is None
    assert initial["source"] == {"kind": "directory", "path": str(library), "commit": None}

    with LoadGenerator(server.base_url, prefetch, clients=4) as load:
        wait_for(lambda: load.since(0), 10)
        assert any("over målet 53" in s for a in load.since(0) for s in summaries(a))

        # 1. A threshold: the default target 53 -> 66 (67 is still above it).
        changed = time.monotonic()
        publish(example, retargeted(original, 66))
        change_shows(load, changed, lambda a: any("over målet 66" in s for s in summaries(a)))
        edited = server.status()
        assert edited["fingerprint"] != initial["fingerprint"]
        assert edited["versions"][0]["content_hash"] != initial["versions"][0]["content_hash"]

        # 2. A card text.
        changed = time.monotonic()
        publish(
            example,
            retargeted(original, 66).replace(
                '"HbA1c {hba1c.value} ({hba1c.date}) er over',
                '"HbA1c {hba1c.value} ({hba1c.date}) ligger over',
            ),
        )
        change_shows(
            load, changed, lambda a: any("ligger over målet 66" in s for s in summaries(a))
        )

        # 3. A new guideline file: in /guidelines and in the cards.
        changed = time.monotonic()
        publish(added, second())
        change_shows(load, changed, lambda a: "example-second" in guidelines_of(a))
        assert {v["id"] for v in server.status()["versions"]} == {"example-hba1c", "example-second"}
        good = server.status()

        # 4. A YAML syntax error: rejected with file:line, the last good set keeps serving.
        changed = time.monotonic()
        publish(
            added,
            second().replace(
                "  t2d: {condition_present: {valueset: t2d}}", "  t2d: {condition_present: [t2d"
            ),
        )
        status, _ = wait_for(lambda: (s := server.status())["rejected"] and s, SEEN_WITHIN)
        assert status["fingerprint"] == good["fingerprint"]
        assert status["rejected"]["errors"]
        assert all(
            re.search(r"example-second\.yaml:\d+:\d+: ", e) for e in status["rejected"]["errors"]
        ), status["rejected"]["errors"]
        time.sleep(2 * POLL)
        assert all("example-second" in guidelines_of(a) for a in load.since(changed) if a.cards)

        # 5. A type error: rejected too, with its own line.
        changed = time.monotonic()
        publish(added, second(when="hba1c.value > true"))
        line = (
            second(when="hba1c.value > true").splitlines().index("    when: hba1c.value > true") + 1
        )

        def type_error_reported() -> list[str]:
            rejected = server.status()["rejected"]
            return [
                e for e in (rejected or {}).get("errors", []) if f"example-second.yaml:{line}:" in e
            ]

        errors, _ = wait_for(type_error_reported, SEEN_WITHIN)
        assert server.status()["fingerprint"] == good["fingerprint"]
        time.sleep(2 * POLL)
        assert all("example-second" in guidelines_of(a) for a in load.since(changed) if a.cards)
        assert not any("Rettet" in s for a in load.since(changed) for s in summaries(a))

        # 6. Fixed: takes effect, and the rejection is no longer reported.
        changed = time.monotonic()
        publish(added, second(summary="Rettet eksempel"))
        change_shows(
            load, changed, lambda a: any(s.startswith("Rettet eksempel") for s in summaries(a))
        )
        assert server.status()["rejected"] is None

        # 7. Removed: gone from /guidelines and from the cards.
        changed = time.monotonic()
        added.unlink()
        change_shows(load, changed, lambda a: "example-second" not in guidelines_of(a))
        assert [v["id"] for v in server.status()["versions"]] == ["example-hba1c"]

    assert load.failures() == [], load.failures()[:3]
    assert len(load.answers) > 50
    events = server.log_events()
    names = [e.get("event") for e in events]
    assert names.count("guidelines.swap") >= 6  # the start and five changes
    assert names.count("guidelines.rejected") == 2
    rejected = [e for e in events if e.get("event") == "guidelines.rejected"]
    assert all(e["errors"] and e["serving"] == good["fingerprint"] for e in rejected)
    assert errors[0] in rejected[1]["errors"]


def test_a_version_switches_on_at_its_moment_without_a_reload(
    server: VejviserProcess, library: Path
) -> None:
    today = danish_today()
    prefetch = full_prefetch(server.base_url, diabetic_patient(today))
    starts = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)).replace(microsecond=0)
    publish(
        library / "example-second.yaml",
        second(summary="Senere eksempel", effective=starts.isoformat()),
    )

    def dormant() -> dict | None:
        status = server.status()
        versions = {v["id"]: v for v in status["versions"]}
        return status if versions.get("example-second", {}).get("status") == "dormant" else None

    loaded, _ = wait_for(dormant, SEEN_WITHIN)
    assert loaded["next_switch_at"] is not None
    with LoadGenerator(server.base_url, prefetch, clients=2) as load:
        answer, _ = wait_for(
            lambda: next((a for a in load.since(0) if "example-second" in guidelines_of(a)), None),
            10,
        )
        wall = dt.datetime.now(dt.UTC)
    before = [a for a in load.answers if a.received < answer.sent]
    assert before and all("example-second" not in guidelines_of(a) for a in before)
    assert starts <= wall <= starts + dt.timedelta(seconds=3)
    status = server.status()
    assert status["fingerprint"] == loaded["fingerprint"]
    assert status["loaded_at"] == loaded["loaded_at"]  # no reload: the moment alone switched it on
    assert {v["id"]: v["status"] for v in status["versions"]}["example-second"] == "active"
    assert load.failures() == []


def test_the_status_command_shows_a_rejected_change(server: VejviserProcess, library: Path) -> None:
    runner = CliRunner()
    shown = runner.invoke(app, ["guidelines", "status", "--url", server.base_url])
    assert shown.exit_code == 0, shown.output
    assert "example-hba1c" in shown.output and "active" in shown.output
    assert f"source       directory {library}" in shown.output

    publish(library / "example.yaml", "id: [\n")
    wait_for(lambda: server.status()["rejected"], SEEN_WITHIN)
    shown = runner.invoke(app, ["guidelines", "status", "--url", server.base_url])
    assert shown.exit_code == 1
    assert "REJECTED at" in shown.output and "example.yaml:2:1: " in shown.output
    as_json = runner.invoke(
        app, ["guidelines", "status", "--url", server.base_url, "--format", "json"]
    )
    assert json.loads(as_json.output)["versions"][0]["status"] == "active"

    nobody = f"http://127.0.0.1:{free_port()}"
    failed = runner.invoke(app, ["guidelines", "status", "--url", nobody, "--timeout", "2"])
    assert failed.exit_code == 2
    assert f"cannot reach {nobody}/guidelines" in failed.output


def test_a_commit_pushed_to_the_branch_is_served(tmp_path: Path) -> None:
    bare, work = tmp_path / "published.git", tmp_path / "author"
    git("init", "--bare", "--quiet", "--initial-branch=main", str(bare))
    git("clone", "--quiet", str(bare), str(work))
    git("checkout", "--quiet", "-b", "main", cwd=work)
    shutil.copytree(FIXTURE_GUIDELINES, work / "rules")  # a folder of the repository
    (work / "README.md").write_text("The quality unit's guidelines.\n")
    git("add", ".", cwd=work)
    git("commit", "--quiet", "-m", "first", cwd=work)
    git("push", "--quiet", "origin", "main", cwd=work)
    source = (
        *("--guidelines-git", f"file://{bare}"),
        *("--branch", "main", "--guidelines-git-path", "rules"),
    )
    with running(VejviserProcess(tmp_path, *source, poll=POLL)) as server:
        status = server.status()
        assert status["source"]["kind"] == "git"
        assert status["source"]["commit"] == git("rev-parse", "HEAD", cwd=work)
        assert status["versions"][0]["file"] == "example.yaml"
        prefetch = full_prefetch(server.base_url, diabetic_patient(danish_today()))
        with LoadGenerator(server.base_url, prefetch, clients=2) as load:
            rule = work / "rules" / "example.yaml"
            rule.write_text(retargeted(rule.read_text(), 62))
            git("commit", "--quiet", "-am", "default target 62", cwd=work)
            changed = time.monotonic()
            git("push", "--quiet", "origin", "main", cwd=work)
            change_shows(load, changed, lambda a: any("over målet 62" in s for s in summaries(a)))
        assert server.status()["source"]["commit"] == git("rev-parse", "HEAD", cwd=work)
        assert load.failures() == []
