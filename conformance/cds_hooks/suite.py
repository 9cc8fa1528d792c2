"""Run every check against one service and report: the entry point of CLI and pytest alike.

Each check runs once, in the order of :data:`~conformance.cds_hooks.checks.CHECKS`. A check that
crashes is reported as failed with the exception named, never skipped: a broken check must not
look like a conforming service.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from conformance.cds_hooks.checks import (
    CHECKS,
    CheckResult,
    Context,
    Failed,
    NotRun,
    Status,
    SuiteConfig,
)
from conformance.cds_hooks.client import ServiceClient
from conformance.cds_hooks.fixture import load_patient

__all__ = ["CHECK_NAMES", "SuiteConfig", "run_suite", "summary", "to_json", "to_text"]

CHECK_NAMES: tuple[str, ...] = tuple(check.name for check in CHECKS)


def run_suite(config: SuiteConfig) -> list[CheckResult]:
    """All checks, in order. Raises FixtureError if the patient bundle cannot be used."""
    patient = load_patient(config.patient_bundle)
    client = ServiceClient(config.base_url, config.signer, config.timeout)
    context = Context(config, client, patient)
    results: list[CheckResult] = []
    try:
        for check in CHECKS:
            client.current_check = check.name
            try:
                note = check.function(context)
            except Failed as failure:
                results.append(
                    CheckResult(check.name, Status.failed, failure.reason, failure.snippet)
                )
            except NotRun as skipped:
                results.append(CheckResult(check.name, Status.not_run, skipped.reason))
            except Exception as exc:  # a crashing check is a failure, never a pass
                results.append(
                    CheckResult(
                        check.name,
                        Status.failed,
                        f"the check could not complete: {type(exc).__name__}: {exc}",
                    )
                )
            else:
                results.append(CheckResult(check.name, Status.passed, note))
    finally:
        context.close()
        client.close()
    return results


def summary(results: list[CheckResult]) -> str:
    counts = Counter(result.status for result in results)
    return (
        f"{counts[Status.passed]} passed, {counts[Status.failed]} failed, "
        f"{counts[Status.not_run]} not run"
    )


_LABELS = {Status.passed: "PASS", Status.failed: "FAIL", Status.not_run: "NOT RUN"}


def to_text(results: list[CheckResult]) -> str:
    """One line per check (a second with the offending response for failures), then the totals."""
    width = max(len(result.name) for result in results) if results else 0
    lines = []
    for result in results:
        line = f"{_LABELS[result.status]:<8} {result.name:<{width}}"
        if result.reason:
            line += f"  {result.reason}"
        lines.append(line.rstrip())
        if result.status is Status.failed and result.snippet:
            lines.append(f"{'':<8} {'':<{width}}  > {result.snippet}")
    lines.append(summary(results))
    return "\n".join(lines)


def to_json(results: list[CheckResult], base_url: str) -> str:
    counts = Counter(result.status for result in results)
    document: dict[str, Any] = {
        "base_url": base_url,
        "results": [result.as_json() for result in results],
        "summary": {
            "passed": counts[Status.passed],
            "failed": counts[Status.failed],
            "not_run": counts[Status.not_run],
        },
    }
    return json.dumps(document, indent=2, ensure_ascii=False)
