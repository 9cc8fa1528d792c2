"""Vejviser passes the CDS Hooks conformance suite, run against the real service over HTTP.

The service runs as a ``vejviser serve`` subprocess on a free loopback port, configured the way
a deployment is: authentication on, one trusted issuer with a static JWK Set (a P-384 key made
for this run), ``public_base_url`` set, CORS origins listed and the feedback database in a
temporary directory. The suite runs once per module; each check is one test, so a failure names
the requirement. JWT and CORS checks must have run, not merely not failed.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from typer.testing import CliRunner

from conformance.cds_hooks.checks import CheckResult, Status, SuiteConfig
from conformance.cds_hooks.client import Signer
from conformance.cds_hooks.suite import CHECK_NAMES, run_suite
from service.cli import app

ISS = "https://ehr.conformance.test"
KID = "conformance-es384"
ORIGIN = "https://ehr.conformance.test"
START_TIMEOUT = 30.0
VEJVISER = Path(sys.executable).with_name("vejviser")

EXPECTED_NOT_RUN = {
    "cards.links": "Vejviser's cards carry no links, so there is nothing to inspect",
}
"""Checks Vejviser gives the suite nothing to look at; each is asserted to stay not run, so a
change that makes it runnable also makes this list (and the check) be looked at again."""

MUST_RUN_PREFIXES = ("jwt.", "cors.", "prefetch.", "cards.")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningService:
    base_url: str
    workdir: Path
    key_path: Path
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _write_key_and_config(workdir: Path, port: int) -> tuple[Path, Path]:
    """A fresh P-384 client key, and a settings file trusting its public half."""
    key = ec.generate_private_key(ec.SECP384R1())
    key_path = workdir / "client-key.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    settings = {
        "auth": {
            "enabled": True,
            "public_base_url": f"http://127.0.0.1:{port}",
            "issuers": [
                {"iss": ISS, "jwks": {"keys": [{**jwk, "kid": KID, "use": "sig", "alg": "ES384"}]}}
            ],
        },
        "cors_origins": [ORIGIN],
        "feedback_database": str(workdir / "feedback.sqlite"),
    }
    config_path = workdir / "vejviser.yaml"
    config_path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return key_path, config_path


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    """``vejviser serve`` in a subprocess; stopped (terminate, then kill) when the module ends."""
    if not VEJVISER.exists():
        pytest.fail(f"{VEJVISER} is missing: install the project (pip install -e .)")
    workdir = tmp_path_factory.mktemp("cds-hooks-conformance")
    port = free_port()
    key_path, config_path = _write_key_and_config(workdir, port)
    log_path = workdir / "service.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEJVISER_")}
    command = [str(VEJVISER), "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--config", str(config_path)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    running = RunningService(f"http://127.0.0.1:{port}", workdir, key_path, log_path)
    try:
        _wait_for_health(process, running)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_for_health(process: subprocess.Popen[bytes], running: RunningService) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    with httpx2.Client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"vejviser serve exited during start-up:\n{running.log_tail()}")
            try:
                if client.get(f"{running.base_url}/health").status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            time.sleep(0.1)
    pytest.fail(
        f"vejviser serve did not answer /health in {START_TIMEOUT} s:\n{running.log_tail()}"
    )


@pytest.fixture(scope="module")
def results(service: RunningService) -> dict[str, CheckResult]:
    config = SuiteConfig(
        base_url=service.base_url,
        signer=Signer.from_pem(service.key_path, KID, ISS),
        cors_origin=ORIGIN,
    )
    return {result.name: result for result in run_suite(config)}


def test_every_check_reported(results: dict[str, CheckResult]) -> None:
    assert list(results) == list(CHECK_NAMES)


@pytest.mark.parametrize("name", CHECK_NAMES)
def test_check(name: str, results: dict[str, CheckResult], service: RunningService) -> None:
    result = results[name]
    if name in EXPECTED_NOT_RUN:
        assert result.status is Status.not_run, (
            f"{name} now runs ({result.status}: {result.reason}); review EXPECTED_NOT_RUN"
        )
        return
    assert result.status is not Status.not_run or not name.startswith(MUST_RUN_PREFIXES), (
        f"{name} did not run: {result.reason}"
    )
    assert result.status is Status.passed, (
        f"{name} {result.status}: {result.reason}\n{result.snippet}\n"
        f"service log:\n{service.log_tail()}"
    )


def test_service_log_holds_no_tokens(
    results: dict[str, CheckResult], service: RunningService
) -> None:
    """Neither the JWTs nor the fhirAuthorization tokens the suite sent end up in the log."""
    log = service.log_path.read_text(errors="replace")
    assert not re.search(r"conformance-[0-9a-f]{32}", log), "a fhirAuthorization token was logged"
    assert not re.search(r"eyJ[A-Za-z0-9_-]{10,}", log), "a JWT (or its header) was logged"


def test_feedback_sent_twice_is_stored_once(
    results: dict[str, CheckResult], service: RunningService
) -> None:
    """What feedback.accepts_and_is_idempotent cannot see from outside: one row per card."""
    assert results["feedback.accepts_and_is_idempotent"].status is Status.passed
    with closing(sqlite3.connect(service.workdir / "feedback.sqlite", timeout=10)) as db:
        rows, cards = db.execute(
            "SELECT count(*), count(DISTINCT card_uuid) FROM feedback"
        ).fetchone()
    assert rows == cards > 0


def test_cli_by_hand_passes(service: RunningService) -> None:
    """The command as a person types it, as a subprocess: exit 0 and a JSON report."""
    command = [str(VEJVISER), "conformance", "cds-hooks", "--base-url", service.base_url]
    command += ["--private-key", str(service.key_path), "--kid", KID, "--iss", ISS]
    command += ["--cors-origin", ORIGIN, "--format", "json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["summary"]["failed"] == 0
    assert report["summary"]["passed"] == len(CHECK_NAMES) - len(EXPECTED_NOT_RUN)


def test_cli_without_key_fails_and_says_why(service: RunningService) -> None:
    """An authenticated service checked without a key: exit 1, JWT checks not run (not passed)."""
    result = CliRunner().invoke(
        app, ["conformance", "cds-hooks", "--base-url", service.base_url, "--timeout", "5"]
    )
    assert result.exit_code == 1, result.output
    assert "requires a signed JWT" in result.output
    assert "NOT RUN  jwt.valid_accepted" in result.output
    assert "PASS     jwt." not in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.endswith("not run") and " failed, " in last


def test_cli_refuses_half_a_key(service: RunningService) -> None:
    result = CliRunner().invoke(
        app, ["conformance", "cds-hooks", "--base-url", service.base_url, "--kid", KID]
    )
    assert result.exit_code == 2
    assert "go together" in result.output
