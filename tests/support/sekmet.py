"""A real FHIR R4 server for tests: sekmet-fhir 0.1.1 run as a subprocess.

sekmet lives in its own virtual environment (``.venv-fhir``, made by ``scripts/setup.sh``) so
its dependencies never mix with Vejviser's. Each server gets a private directory holding its
settings, SQLite database (``data/sekmet.db``) and log; its settings switch off everything a test
server must not do (listen on all interfaces, simulate hospital workflows on writes, log every
request body).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest

ROOT = Path(__file__).resolve().parents[2]
SEKMET = ROOT / ".venv-fhir" / "bin" / "sekmet"
VERSION = "0.1.1"

START_TIMEOUT = 15.0
"""Seconds to wait for /fhir/metadata; a cold start (first byte-compile) takes ~1.7 s."""

MISSING = (
    f"sekmet-fhir is not installed at {SEKMET}. Run `bash scripts/setup.sh` (it creates "
    f".venv-fhir with sekmet-fhir=={VERSION}); the FHIR REST tests need a real FHIR server."
)

# Environment variables sekmet reads over its settings file: a developer's values must not point
# the test server at their own database or port.
_SEKMET_ENV = ("SEKMET_CONFIG", "SEKMET_BASE_URL", "SEKMET_DB", "SEKMET_PUBLIC_URL", "SEKMET_PORT")


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SekmetServer:
    """One sekmet process on 127.0.0.1 with its data in ``workdir``; restartable, data kept."""

    def __init__(
        self,
        workdir: Path,
        *,
        executable: Path = SEKMET,
        server_auth: dict[str, Any] | None = None,
    ) -> None:
        """``server_auth`` replaces ``{types: [none]}``, e.g. ``{"types": ["bearer"], "tokens":
        ["t1"]}`` (static tokens) or ``{"types": ["smart"], "smart_clients": [{"client_id": ...,
        "jwks": {...}, "scopes": "system/*.rs"}]}`` (SMART Backend Services, token URL
        ``/auth/token``, 401 without or with a bad token, 403 when the scopes do not cover it)."""
        self.workdir = workdir
        self.executable = executable
        self.server_auth = server_auth or {"types": ["none"]}
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/fhir"
        self.db_path = workdir / "data" / "sekmet.db"
        self.log_path = workdir / "sekmet.log"
        self._process: subprocess.Popen[bytes] | None = None

    def write_settings(self) -> Path:
        """settings.yaml with absolute paths, so nothing lands in the current directory."""
        settings = self.workdir / "settings.yaml"
        settings.write_text(
            "\n".join(
                [
                    f"base_url: {self.base_url}",
                    "host: 127.0.0.1",
                    f"port: {self.port}",
                    f"data_dir: {json.dumps(str(self.workdir / 'data'))}",
                    f"own_private_key_path: {json.dumps(str(self.workdir / 'keys' / 'sekmet.pem'))}",
                    "simulator: {enabled: false}",
                    'validation: {inbound: "off"}',
                    "log_inbound: false",
                    f"server_auth: {json.dumps(self.server_auth)}",  # JSON is YAML
                    "",
                ]
            ),
            encoding="utf-8",
        )
        return settings

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start sekmet and wait until /fhir/metadata answers; RuntimeError with its log if not."""
        if self.running:
            return
        if not self.executable.exists():
            raise FileNotFoundError(MISSING)
        self.workdir.mkdir(parents=True, exist_ok=True)
        settings = self.write_settings()
        env = {k: v for k, v in os.environ.items() if k not in _SEKMET_ENV}
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [str(self.executable), "serve", "-c", str(settings)],
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        with httpx2.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if not self.running:
                    raise RuntimeError(f"sekmet exited during start-up:\n{self.log_tail()}")
                try:
                    if client.get(f"{self.base_url}/metadata").status_code == 200:
                        return
                except httpx2.TransportError:
                    pass
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sekmet did not answer within {START_TIMEOUT} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Terminate (then kill after 5 s); the data directory stays for a later start()."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def load(self, resources: Iterable[dict[str, Any]], *, access_token: str | None = None) -> None:
        """Store resources under their own ids (one transaction of PUTs), then ANALYZE.

        POST entries would get new server ids; PUT keeps fixture ids. Without ANALYZE sekmet's
        SQLite picks bad plans after a bulk load (sorted searches took seconds, not ~17 ms).
        ``access_token`` is needed only when ``server_auth`` is not ``none``.
        """
        entries = []
        for resource in resources:
            ref = f"{resource['resourceType']}/{resource['id']}"
            entries.append({"resource": resource, "request": {"method": "PUT", "url": ref}})
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
        if access_token:
            headers["Authorization"] = f"Bearer {access_token}"
        response = httpx2.post(
            self.base_url,
            json=bundle,
            headers=headers,
            timeout=60.0,
        )
        if response.status_code != 200:
            raise RuntimeError(f"sekmet rejected the transaction: {response.text[:1000]}")
        for entry in response.json().get("entry", []):
            status = entry.get("response", {}).get("status", "")
            if not status.startswith(("200", "201")):
                raise RuntimeError(f"sekmet rejected a transaction entry: {entry}")
        self.analyze()

    def analyze(self) -> None:
        """Refresh SQLite's planner statistics in sekmet's database (WAL: safe while it runs)."""
        with closing(sqlite3.connect(self.db_path, timeout=30)) as conn:
            conn.execute("ANALYZE")

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class FastSekmet(SekmetServer):
    """sekmet whose export jobs skip their one-second pause (``simulator.delay_seconds``)."""

    def write_settings(self) -> Path:
        path = super().write_settings()
        text = path.read_text(encoding="utf-8")
        fast = "simulator: {enabled: false, delay_seconds: 0}"
        path.write_text(text.replace("simulator: {enabled: false}", fast), encoding="utf-8")
        return path


@contextmanager
def running(server: SekmetServer) -> Iterator[SekmetServer]:
    """The server, started for the block and stopped after it. A server that is missing or does
    not start fails the test, never skips it: these tests need a real FHIR server."""
    try:
        server.start()
    except (FileNotFoundError, RuntimeError) as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()
