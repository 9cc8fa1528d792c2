"""FHIR Bulk Data Access client (Bulk Data IG v2): export a server's data as NDJSON files.

Why: population sweeps and quality indicators need every patient's data, and paging through
searches for a whole practice list is slow and hard on the server. Bulk ``$export`` is the
standard way: the server prepares NDJSON files in the background and we download them.

The flow (one :meth:`BulkExportClient.export` call, or the steps on their own):

1. **Kick-off**: ``GET [base]/$export``, ``[base]/Patient/$export`` or
   ``[base]/Group/<id>/$export`` with ``_type`` and ``_since``, ``Prefer: respond-async`` and
   ``Accept: application/fhir+json``; the server answers 202 with ``Content-Location``, the
   status URL.
2. **Polling** the status URL: 202 while running (``X-Progress`` is reported, ``Retry-After``
   in seconds or as an HTTP date is honoured, otherwise the interval grows), 200 with the
   manifest when done, 4xx/5xx with an OperationOutcome when the export failed (transient
   errors, 429 and 503 are retried a bounded number of times in a row). The deadline ends it.
3. **Downloads**: every ``output`` file, and every ``error`` file (OperationOutcome NDJSON:
   errors for resources the server could not export, warnings and information; never skipped,
   counted by severity in the result), streamed to ``<name>.part`` and renamed when complete.
   A file counts as complete when its size (Content-Length/Content-Range) matches or, without
   one, when its gzip stream reached its end and its last line ends with a newline; resource
   counts (the manifest's ``count``) are verified too.
4. Optionally **DELETE** on the status URL, so the server can free the files.

Resuming: the directory holds ``export.json`` (the request, the status URL and, once known, the
manifest). A re-run with the same request polls the same job instead of starting a new one,
skips files that are complete (their resource count is checked again) and continues ``.part``
files with an HTTP ``Range`` request; a server that ignores Range sends the whole file, which
then replaces the partial one. Interrupted transfers are also resumed within a run, a bounded
number of times. A job the server reports failed, or whose files it no longer has, is replaced
by a new one.

Safety, as in :mod:`fhir_adapter.rest`: redirects are never followed; the access token is sent
only to the FHIR server's own origin (a status URL or a file URL elsewhere that needs the token
is refused); messages and logs never contain the token, URLs (file URLs may be pre-signed) or
resource ids. All errors are :class:`~fhir_adapter.rest.FhirError` subclasses:
:class:`~fhir_adapter.rest.FhirUnauthorized`, :class:`~fhir_adapter.rest.FhirRejected` (kick-off
refused as written), :class:`~fhir_adapter.rest.FhirNotFound` (no such Group),
:class:`ExportFailed` (the server reports that the job failed; its OperationOutcome text in
``diagnostics``), :class:`ExportNotFound`, :class:`ExportTimeout` (budget or poll limit reached;
the job may still run, ``status_url`` says where), :class:`DownloadFailed`,
:class:`ExportExpired`, :class:`ExportDirectoryInUse` and
:class:`~fhir_adapter.rest.FhirUnavailable`.
"""

from __future__ import annotations

import codecs
import email.utils
import json
import logging
import os
import re
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx2
import orjson

from fhir_adapter.rest import (
    FHIR_ID,
    FhirError,
    FhirNotFound,
    FhirTimeout,
    FhirUnauthorized,
    FhirUnavailable,
    StatusErrors,
    _diagnostics,
    _origin,
    _transport_reason,
)

__all__ = [
    "DELETED_DIR",
    "STATE_FILE",
    "BulkExportClient",
    "Deletions",
    "DownloadFailed",
    "ExportDirectoryInUse",
    "ExportExpired",
    "ExportFailed",
    "ExportLevel",
    "ExportNotFound",
    "ExportResult",
    "ExportTimeout",
    "Manifest",
    "OutputFile",
    "TokenSource",
    "deleted_resources",
]

log = logging.getLogger(__name__)

ExportLevel = Literal["system", "patient", "group"]

STATE_FILE = "export.json"
"""Per-directory record of the export (request, status URL, manifest) that makes re-runs resume."""

ERROR_DIR = "errors"
"""Subdirectory for the manifest's ``error`` files, apart from the exported data."""

DELETED_DIR = "deleted"
"""Subdirectory for the manifest's ``deleted`` files: what was deleted since ``_since``."""

MAX_JSON_BYTES = 16 * 1024 * 1024
"""Largest manifest read; a bigger one is refused rather than held in memory."""

_ERROR_BODY_BYTES = 64 * 1024
_STATE_VERSION = 1
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes \*/(\d+)")
_TRANSIENT_CODES = {"transient", "throttled"}
_GRAVITY = {"fatal": 0, "error": 0, "warning": 1, "information": 2}


# --- errors -----------------------------------------------------------------------------------


class ExportFailed(FhirError):  # noqa: N818 (reads as the outcome)
    """The server reports that the export job failed; ``diagnostics`` has its OperationOutcome."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        diagnostics: str | None = None,
        status_url: str | None = None,
    ) -> None:
        super().__init__(message, status=status, diagnostics=diagnostics)
        self.status_url = status_url
        """The job's status URL (not in the message: with auth ``none`` it grants access)."""


class ExportNotFound(ExportFailed):
    """The status URL names no job (expired, deleted, or lost in a server restart)."""


class ExportTimeout(FhirTimeout):
    """The time budget or the poll limit ran out; the job may still be running on the server.

    Poll ``status_url`` later (:meth:`BulkExportClient.wait`) or re-run :meth:`export` on the
    same directory, which picks the job up again.
    """

    def __init__(self, message: str, *, status_url: str | None = None) -> None:
        super().__init__(message)
        self.status_url = status_url


class DownloadFailed(FhirUnavailable):
    """An output or error file could not be downloaded completely or failed verification."""


class ExportExpired(DownloadFailed):
    """The server no longer has a file of the manifest (404/410): the job expired or was deleted.

    :meth:`BulkExportClient.export` then starts a new job (once per call).
    """


class ExportDirectoryInUse(FhirError):  # noqa: N818 (reads as the outcome)
    """The directory holds another export (another request, server or manifest).

    Mixing two exports' files would make both wrong; use a new directory per export.
    """


class _TransportFailure(FhirUnavailable):
    """No usable response (connection, protocol): a download retries these."""


class _Interrupted(Exception):  # noqa: N818
    """A transfer stopped before the file was complete; the ``.part`` file may be resumed."""


class _Busy(Exception):  # noqa: N818
    """The server answered a download with 429, 503 or a transient error: ask again later."""

    def __init__(self, status: int, delay: float | None, diagnostics: str | None) -> None:
        super().__init__(status)
        self.status, self.delay, self.diagnostics = status, delay, diagnostics


# --- data -------------------------------------------------------------------------------------


class TokenSource(Protocol):
    """Where access tokens come from, e.g. :class:`fhir_adapter.backend_auth.BackendServicesAuth`.

    ``deadline`` uses the same clock as the export client (``time.monotonic()`` by default).
    """

    def access_token(self, deadline: float | None = None) -> str: ...

    def invalidate(self) -> None: ...


@dataclass(frozen=True, slots=True)
class OutputFile:
    """One file of the manifest's ``output``, ``error`` or ``deleted`` list."""

    type: str
    url: str = field(repr=False)  # may be pre-signed: keep it out of reprs and logs
    count: int | None = None


@dataclass(frozen=True, slots=True)
class Manifest:
    """The completed export's manifest (Bulk Data IG "Response - Complete Status")."""

    transaction_time: str
    """Server time the export reflects: pass it as ``since`` to the next incremental export."""
    request: str
    requires_access_token: bool
    output: tuple[OutputFile, ...]
    error: tuple[OutputFile, ...]
    raw: dict[str, Any] = field(repr=False, compare=False)
    deleted: tuple[OutputFile, ...] = ()
    """Bundle files naming the resources deleted since ``_since`` (Bulk Data 2.0)."""

    @classmethod
    def parse(cls, data: object) -> Manifest:
        """Validate a manifest; an unusable one is :class:`FhirUnavailable` (a server fault)."""
        if not isinstance(data, dict):
            raise FhirUnavailable("The export manifest is not a JSON object.")
        transaction_time = data.get("transactionTime")
        if not isinstance(transaction_time, str) or not _INSTANT.fullmatch(transaction_time):
            raise FhirUnavailable("The export manifest has no valid transactionTime.")
        request = data.get("request")
        if not isinstance(request, str):
            raise FhirUnavailable("The export manifest has no request URL.")
        # Required by the IG; when a server leaves it out, assume the token is needed: it is
        # then only ever sent to the FHIR server's own origin anyway.
        requires = data.get("requiresAccessToken", True)
        if not isinstance(requires, bool):
            raise FhirUnavailable("The export manifest's requiresAccessToken is not a boolean.")
        return cls(
            transaction_time=transaction_time,
            request=request,
            requires_access_token=requires,
            output=_parse_files(data.get("output"), "output", required=True),
            error=_parse_files(data.get("error"), "error", required=False),
            raw=data,
            deleted=_parse_files(data.get("deleted"), "deleted", required=False),
        )


def _parse_files(value: object, name: str, *, required: bool) -> tuple[OutputFile, ...]:
    if value is None and not required:
        return ()
    if not isinstance(value, list):
        raise FhirUnavailable(f"The export manifest's {name} is not a list.")
    files = []
    for item in value:
        if not isinstance(item, dict):
            raise FhirUnavailable(f"The export manifest's {name} list has a malformed entry.")
        rtype, url, count = item.get("type"), item.get("url"), item.get("count")
        # The type becomes a file name: anything but a resource type name could leave the
        # directory ("../..") and is refused.
        if not isinstance(rtype, str) or not _RESOURCE_TYPE.fullmatch(rtype):
            raise FhirUnavailable(f"The export manifest's {name} list names an invalid type.")
        if not isinstance(url, str) or not url:
            raise FhirUnavailable(f"The export manifest's {name} list has an entry without url.")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            raise FhirUnavailable(f"The export manifest's {name} list has a non-integer count.")
        if count is not None and count < 0:
            raise FhirUnavailable(f"The export manifest's {name} list has a negative count.")
        files.append(OutputFile(rtype, url, count))
    return tuple(files)


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What an export left on disk, and what the server reported."""

    manifest: Manifest
    directory: Path
    files: dict[str, list[Path]]
    """Downloaded NDJSON files by resource type, in manifest order."""
    error_files: list[Path]
    """The manifest's ``error`` files (OperationOutcome NDJSON), downloaded under ``errors/``."""
    error_count: int
    """OperationOutcomes of severity error or fatal in the error files (and lines that say no
    severity): resources the server could not export."""
    deleted_files: list[Path] = field(default_factory=list)
    """The manifest's ``deleted`` files (transaction Bundles), downloaded under ``deleted/``:
    read them with :func:`deleted_resources` and remove those resources from earlier data."""
    status_url: str | None = field(default=None, repr=False)
    job_deleted: bool = False
    cleanup_error: FhirError | None = None
    """Why deleting the job failed (the data are complete; the server keeps the files)."""
    warning_count: int = 0
    """OperationOutcomes of severity warning in the error files: nothing was left out."""
    information_count: int = 0
    """OperationOutcomes of severity information in the error files (e.g. an ignored
    parameter): nothing was left out."""

    @property
    def transaction_time(self) -> str:
        """Use as ``since`` for the next export to get only what changed after this one."""
        return self.manifest.transaction_time

    @property
    def has_errors(self) -> bool:
        return self.error_count > 0

    def resources(self, resource_type: str) -> Iterator[dict[str, Any]]:
        """The exported resources of one type, read line by line (never a whole file)."""
        for path in self.files.get(resource_type, []):
            yield from _read_ndjson(path)

    def outcomes(self) -> Iterator[dict[str, Any]]:
        """The OperationOutcomes from the error files, read line by line."""
        for path in self.error_files:
            yield from _read_ndjson(path)


@dataclass(frozen=True, slots=True)
class Deletions:
    """The resources a server deleted since an earlier export, from its ``deleted`` files."""

    names: frozenset[str]
    """``Type/id`` of each deleted resource."""
    unreadable: tuple[str, ...]
    """``file:line: reason`` of each line or entry that names no resource, so nothing is
    skipped silently: a deletion that cannot be applied leaves the resource where it was."""


def deleted_resources(files: Iterable[Path]) -> Deletions:
    """Read ``deleted`` files: NDJSON (gzipped or not) of transaction Bundles whose entries have
    ``request.method`` DELETE and ``request.url`` ``Type/id`` (relative, or absolute with the
    server's base), as the Bulk Data IG (2.0) describes them."""
    names: set[str] = set()
    unreadable: list[str] = []
    for path in files:
        for number, line in enumerate(_deletion_lines(path), start=1):
            if not line.strip():
                continue
            found, problem = _deleted_in(line)
            names.update(found)
            if problem is not None:
                unreadable.append(f"{path.name}:{number}: {problem}")
    return Deletions(frozenset(names), tuple(unreadable))


def _deletion_lines(path: Path) -> list[bytes]:
    """A deleted file's lines, read as the ingest reads NDJSON: gzip told by its first bytes
    (servers may deliver ``.ndjson.gz``), a UTF-8 byte-order mark at its start ignored.
    Raises FhirInputError naming a gzip file that cannot be decompressed, OSError as reading."""
    from fhir_adapter.bundles import file_bytes  # bundles imports this module
    from fhir_adapter.normalise import FhirInputError

    try:
        data = file_bytes(path)
    except FhirInputError as exc:
        raise FhirInputError(f"{path.name}: {exc}") from None
    return data.removeprefix(codecs.BOM_UTF8).split(b"\n")


def _deleted_in(line: bytes) -> tuple[list[str], str | None]:
    """The names one Bundle line deletes, and what was wrong with it (the first problem)."""
    try:
        bundle = orjson.loads(line)
    except orjson.JSONDecodeError:
        return [], "not JSON"
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        return [], "not a Bundle"
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return [], "a Bundle without entries"
    names, problem = [], None
    for entry in entries:
        request = entry.get("request") if isinstance(entry, dict) else None
        method = request.get("method") if isinstance(request, dict) else None
        url = request.get("url") if isinstance(request, dict) else None
        name = _deleted_name(url) if method == "DELETE" and isinstance(url, str) else None
        if name is None:
            problem = problem or "an entry without a DELETE request of a Type/id url"
        else:
            names.append(name)
    return names, problem


def _deleted_name(url: str) -> str | None:
    parts = url.split("?", 1)[0].rstrip("/").split("/")
    if len(parts) < 2 or not _RESOURCE_TYPE.fullmatch(parts[-2]):
        return None
    return f"{parts[-2]}/{parts[-1]}" if FHIR_ID.fullmatch(parts[-1]) else None


def _read_ndjson(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as lines:
        for line in lines:
            if line.strip():
                yield orjson.loads(line)


# --- the client -------------------------------------------------------------------------------


class BulkExportClient:
    """Bulk ``$export`` against one FHIR server, over a caller-owned ``httpx2.Client``.

    The caller owns the client (TLS, proxies, connection limits, closing it). ``auth`` supplies
    bearer tokens (SMART Backend Services); without it no Authorization header is sent. Every
    request's timeout is ``request_timeout`` capped at what is left of the overall deadline.
    ``sleep``, ``clock`` (monotonic) and ``wall_clock`` (Unix time, for HTTP-date Retry-After)
    are injectable so tests can record waits instead of waiting. Polling ends at the deadline;
    ``max_polls`` (none by default) caps the number of status requests as well.
    """

    def __init__(
        self,
        client: httpx2.Client,
        base_url: str,
        *,
        auth: TokenSource | None = None,
        request_timeout: float = 60.0,
        poll_interval: float = 2.0,
        min_poll_interval: float = 0.5,
        max_poll_interval: float = 120.0,
        max_polls: int | None = None,
        max_retries: int = 5,
        download_attempts: int = 3,
        max_json_bytes: int = MAX_JSON_BYTES,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        base = _parse_base(base_url)
        if not 0 < min_poll_interval <= poll_interval <= max_poll_interval:
            raise ValueError("need 0 < min_poll_interval <= poll_interval <= max_poll_interval")
        if (max_polls is not None and max_polls < 1) or max_retries < 0 or download_attempts < 1:
            raise ValueError("max_polls and download_attempts must be >= 1, max_retries >= 0")
        self._client = client
        self._base = str(base).rstrip("/")
        self._base_url = base
        self._auth = auth
        self._request_timeout = request_timeout
        self._poll_interval = poll_interval
        self._min_poll = min_poll_interval
        self._max_poll = max_poll_interval
        self._max_polls = max_polls
        self._max_retries = max_retries
        self._download_attempts = download_attempts
        self._max_json_bytes = max_json_bytes
        self._sleep = sleep
        self._clock = clock
        self._wall_clock = wall_clock

    # --- the whole export ---------------------------------------------------------------------

    def export(
        self,
        directory: Path | str,
        *,
        level: ExportLevel = "system",
        group_id: str | None = None,
        types: Sequence[str] = (),
        since: datetime | str | None = None,
        timeout: float = 3600.0,
        delete_job: bool = True,
        on_progress: Callable[[str], None] | None = None,
    ) -> ExportResult:
        """Kick off (or pick up) an export, wait for it, download everything into ``directory``.

        ``timeout`` bounds the whole call. A re-run on the same directory with the same
        arguments resumes: it polls the job recorded in ``export.json`` (starting a new one if
        the server no longer knows it or reports it failed), skips complete files and continues
        partial ones. If the server no longer has the job's files (expired), they and the job
        are dropped and a new job is started, once per call.
        With ``delete_job`` the job is deleted on the server once every file is complete; a
        failure to delete is reported in :attr:`ExportResult.cleanup_error`, not raised.
        One export at a time per directory.
        """
        deadline = self._clock() + timeout
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        request = _request_key(level, group_id, types, since)
        state = _read_state(directory)
        if state is not None and (
            state.get("base_url") != self._base or state.get("request") != request
        ):
            raise ExportDirectoryInUse(
                "The directory holds files of another export (other server or parameters); "
                "use a new directory for each export."
            )
        state = state or {"base_url": self._base, "request": request}
        state = self._ready(directory, state, deadline, on_progress)
        try:
            result = self._download_state(directory, state, deadline)
        except ExportExpired:
            # The server dropped the job's files: only a new job can deliver the data.
            log.warning("Bulk export: the server no longer has the export's files; starting anew")
            state = self._ready(directory, _forget_job(directory, state), deadline, on_progress)
            result = self._download_state(directory, state, deadline)
        return self._finish(directory, state, result, delete_job=delete_job, deadline=deadline)

    def _ready(
        self,
        directory: Path,
        state: dict[str, Any],
        deadline: float,
        on_progress: Callable[[str], None] | None,
    ) -> dict[str, Any]:
        """``state`` with a manifest: the one recorded, the recorded job's, or a new job's."""
        if state.get("manifest"):
            return state
        status_url: str | None = state.get("status_url")
        manifest = None
        if status_url is not None:
            manifest = self._pick_up(status_url, deadline, on_progress)
        if manifest is None:
            request = state["request"]
            status_url = self.kick_off(
                request["level"],
                group_id=request["group_id"],
                types=request["types"],
                since=request["since"],
                deadline=deadline,
            )
            _write_state(directory, {**state, "status_url": status_url, "manifest": None})
            manifest = self.wait(status_url, deadline=deadline, on_progress=on_progress)
        state = {**state, "status_url": status_url, "manifest": manifest.raw}
        _write_state(directory, state)
        return state

    def _pick_up(
        self, status_url: str, deadline: float, on_progress: Callable[[str], None] | None
    ) -> Manifest | None:
        """The recorded job's manifest; None when the server lost the job or reports it failed.

        A failed job never yields a manifest: polling it again on every re-run would keep the
        directory (the CLI's STORE/exports/current) stuck for good, so a new job is started.
        """
        log.info("Bulk export: picking up the job recorded in %s", STATE_FILE)
        try:
            return self.wait(status_url, deadline=deadline, on_progress=on_progress)
        except ExportNotFound:
            log.info("Bulk export: the server no longer knows the recorded job; starting anew")
        except ExportFailed:
            log.warning("Bulk export: the recorded job failed on the server; starting anew")
        return None

    def _download_state(
        self, directory: Path, state: dict[str, Any], deadline: float
    ) -> ExportResult:
        manifest = Manifest.parse(state["manifest"])
        return self.download(manifest, directory, deadline=deadline, status_url=state["status_url"])

    def _finish(
        self,
        directory: Path,
        state: dict[str, Any],
        result: ExportResult,
        *,
        delete_job: bool,
        deadline: float,
    ) -> ExportResult:
        """Delete the job on the server once (a failure to is reported, not raised)."""
        status_url = state.get("status_url")
        if not delete_job or status_url is None or state.get("job_deleted"):
            return replace(result, job_deleted=bool(state.get("job_deleted")))
        try:
            self.delete(status_url, deadline=deadline)
        except FhirError as exc:
            log.warning("Bulk export: the job could not be deleted on the server: %s", exc)
            return replace(result, cleanup_error=exc)
        _write_state(directory, {**state, "job_deleted": True})
        return replace(result, job_deleted=True)

    # --- the steps ----------------------------------------------------------------------------

    def kick_off(
        self,
        level: ExportLevel = "system",
        *,
        group_id: str | None = None,
        types: Sequence[str] = (),
        since: datetime | str | None = None,
        deadline: float,
    ) -> str:
        """Start an export job; returns its status URL (same origin as the FHIR server).

        ``since`` is a timezone-aware datetime (sent in UTC, cut to milliseconds: earlier,
        so nothing is missed) or a FHIR instant such as a previous manifest's transactionTime,
        which is sent unchanged.
        """
        request = _request_key(level, group_id, types, since)
        path = {
            "system": "$export",
            "patient": "Patient/$export",
            "group": f"Group/{request['group_id']}/$export",
        }[level]
        url = f"{self._base}/{path}"
        params: dict[str, str] = {}
        if request["types"]:
            params["_type"] = ",".join(request["types"])
        if request["since"]:
            params["_since"] = request["since"]
        headers = {"Accept": "application/fhir+json", "Prefer": "respond-async"}
        what = f"{level}-level export kick-off"
        retries = 0
        while True:
            answer = self._exchange(
                "GET", url, params=params, headers=headers, deadline=deadline, what=what
            )
            if answer.status == 202:
                break
            if answer.status == 200:
                raise FhirUnavailable(
                    f"The FHIR server answered the {what} synchronously (HTTP 200) instead of "
                    "starting an asynchronous export."
                )
            if _is_transient(answer.status, answer.body) and retries < self._max_retries:
                retries += 1
                delay = self._retry_after(answer.headers) or self._poll_interval * retries
                log.info("Bulk export: %s got HTTP %d; retrying", what, answer.status)
                self._pause(delay, deadline, what, status_url=None)
                continue
            errors = _GROUP_ERRORS if level == "group" else _REQUEST_ERRORS
            raise errors.error(answer.status, what, answer.diagnostics)
        location = answer.headers.get("Content-Location")
        if not location:
            raise FhirUnavailable(
                f"The FHIR server's answer to the {what} has no Content-Location."
            )
        try:
            status_url = httpx2.URL(url).join(location)
        except httpx2.InvalidURL:
            raise FhirUnavailable(f"The Content-Location of the {what} is not a URL.") from None
        self._check_origin(status_url, "status URL")
        log.info("Bulk export: %s accepted", what)
        return str(status_url)

    def wait(
        self,
        status_url: str,
        *,
        deadline: float,
        on_progress: Callable[[str], None] | None = None,
    ) -> Manifest:
        """Poll the status URL until the manifest is ready; honours Retry-After, reports X-Progress.

        Without Retry-After the interval starts at ``poll_interval`` and grows by half each
        time up to ``max_poll_interval``. The deadline ends the polling (and ``max_polls``, if
        set). Transient errors are retried ``max_retries`` times in a row.
        """
        self._check_origin(httpx2.URL(status_url), "status URL")
        what = "export status request"
        interval = self._poll_interval
        retries = polls = 0
        while True:
            polls += 1
            try:
                answer = self._exchange(
                    "GET",
                    status_url,
                    headers={"Accept": "application/fhir+json"},
                    deadline=deadline,
                    what=what,
                )
            except FhirTimeout as exc:
                raise ExportTimeout(str(exc), status_url=status_url) from None
            if answer.status == 200:
                return _complete(answer.body, what)
            if answer.status == 202:
                retries = 0  # the budget is for errors in a row, not for the whole export
                _report_progress(answer.headers, on_progress)
                delay = self._retry_after(answer.headers)
                if delay is None:
                    delay, interval = interval, min(interval * 1.5, self._max_poll)
            elif _is_transient(answer.status, answer.body):
                retries += 1
                if retries > self._max_retries:
                    # Throttled or unavailable for too long: the job itself did not fail (and a
                    # re-run polls it again), so this is not ExportFailed.
                    raise _busy_error(answer.status, what, retries, answer.diagnostics)
                log.info("Bulk export: status request got HTTP %d; retrying", answer.status)
                delay = self._retry_after(answer.headers) or interval
            else:
                raise _STATUS_ERRORS.error(
                    answer.status, what, answer.diagnostics, status_url=status_url
                )
            if polls == self._max_polls:
                raise ExportTimeout(
                    f"The export was not complete after {polls} status requests; it may "
                    "still be running on the server.",
                    status_url=status_url,
                )
            self._pause(delay, deadline, "export", status_url=status_url)

    def download(
        self,
        manifest: Manifest,
        directory: Path | str,
        *,
        deadline: float,
        status_url: str | None = None,
    ) -> ExportResult:
        """Download every output, error and deleted file of ``manifest`` into ``directory``.

        Files already complete there are skipped (counts checked again), ``.part`` files are
        resumed. Error files are downloaded like data and counted by severity in the result:
        errors are resources that were not exported; warnings and information (the IG puts
        them in the same files) are not. :class:`ExportExpired` when the server no longer has
        a file.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = _read_state(directory)
        if state is None:
            state = {"base_url": self._base, "request": None, "status_url": status_url}
        if state.get("manifest") is not None and state["manifest"] != manifest.raw:
            raise ExportDirectoryInUse(
                "The directory holds files of another export (a different manifest); use a "
                "new directory for each export."
            )
        if manifest.requires_access_token and self._auth is None:
            raise FhirUnauthorized(
                "The export's files require an access token, but no token source is configured."
            )
        _write_state(directory, {**state, "manifest": manifest.raw})
        send_token = manifest.requires_access_token and self._auth is not None
        found: dict[str, list[tuple[OutputFile, Path]]] = {}
        for kind, entry, target, label in _layout(manifest, directory):
            target.parent.mkdir(exist_ok=True)
            self._download_file(entry, target, label, send_token=send_token, deadline=deadline)
            found.setdefault(kind, []).append((entry, target))
        files: dict[str, list[Path]] = {}
        for entry, target in found.get("output", []):
            files.setdefault(entry.type, []).append(target)
        error_files = [target for _, target in found.get("error", [])]
        severities = _outcome_severities(error_files)
        log.info(
            "Bulk export: %d file(s) of %d type(s) in %s; the error files hold %d error(s), "
            "%d warning(s) and %d information message(s)",
            sum(len(paths) for paths in files.values()),
            len(files),
            directory,
            severities["error"],
            severities["warning"],
            severities["information"],
        )
        return ExportResult(
            manifest=manifest,
            directory=directory,
            files=files,
            error_files=error_files,
            error_count=severities["error"],
            warning_count=severities["warning"],
            information_count=severities["information"],
            deleted_files=[target for _, target in found.get("deleted", [])],
            status_url=status_url,
        )

    def delete(self, status_url: str, *, deadline: float) -> None:
        """Delete the job (cancel it, or let the server free its files); gone already is fine."""
        self._check_origin(httpx2.URL(status_url), "status URL")
        what = "export delete request"
        answer = self._exchange(
            "DELETE",
            status_url,
            headers={"Accept": "application/fhir+json"},
            deadline=deadline,
            what=what,
        )
        if answer.status in (200, 202, 204):
            log.info("Bulk export: job deleted on the server")
            return
        if answer.status in (404, 410):
            log.info("Bulk export: the job was already gone on the server")
            return
        raise _REQUEST_ERRORS.error(answer.status, what, answer.diagnostics)

    # --- one file -----------------------------------------------------------------------------

    def _download_file(
        self, entry: OutputFile, target: Path, label: str, *, send_token: bool, deadline: float
    ) -> None:
        """Make ``target`` a complete copy of ``entry``: skip, resume or download it."""
        if target.exists():
            if entry.count is None or _count_resources(target) == entry.count:
                log.debug("Bulk export: %s is complete; skipped", label)
                return
            log.warning("Bulk export: %s does not match the manifest; downloading it again", label)
            target.unlink()
        url = self._file_url(entry.url, label, send_token=send_token)
        part = target.with_name(target.name + ".part")
        self._transfer(url, part, f"download of the {label}", send_token, deadline)
        count = _count_resources(part)
        if entry.count is not None and count != entry.count:
            part.unlink()
            raise DownloadFailed(
                f"The {label} holds {count} resources but the manifest says {entry.count}; "
                "the download was discarded."
            )
        part.replace(target)
        log.debug("Bulk export: %s complete (%d resources)", label, count)

    def _transfer(self, url: str, part: Path, what: str, send_token: bool, deadline: float) -> None:
        """Fetch until ``part`` is whole: an interrupted transfer is resumed (``download_attempts``
        times), a busy server (429, 503, transient) is asked again as polling does."""
        interrupted = busy = 0
        while True:
            try:
                self._fetch(url, part, what, send_token=send_token, deadline=deadline)
                return
            except _Interrupted as exc:
                interrupted, busy = interrupted + 1, 0
                kept = part.stat().st_size if part.exists() else 0
                log.info("Bulk export: %s interrupted (%s), %d bytes kept", what, exc, kept)
                if interrupted == self._download_attempts:
                    raise DownloadFailed(
                        f"The {what} was interrupted {interrupted} times (the last: {exc}); the "
                        "partial file is kept and a re-run resumes it."
                    ) from None
                delay = 2.0**interrupted
            except _Busy as exc:
                busy += 1
                if busy > self._max_retries:
                    raise _busy_error(exc.status, what, busy, exc.diagnostics) from None
                log.info("Bulk export: %s got HTTP %d; retrying", what, exc.status)
                delay = exc.delay or self._poll_interval * busy
            self._pause(delay, deadline, what, status_url=None)

    def _fetch(self, url: str, part: Path, what: str, *, send_token: bool, deadline: float) -> None:
        """One GET of a file into ``part``: resumes with Range when there is a partial file.

        Raises :class:`_Interrupted` when the transfer stopped early or nothing proves the file
        whole (the part keeps what arrived), or the partial file turned out unusable (it is
        removed); :class:`_Busy` when the server asks to come back later.
        """
        offset = part.stat().st_size if part.exists() else 0
        # gzip or nothing (the end of a gzip stream is checked); a resumed transfer unencoded:
        # Range counts bytes as sent, and the part holds decoded bytes.
        headers = {
            "Accept": "application/fhir+ndjson",
            "Accept-Encoding": "identity" if offset else "gzip",
        }
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            with self._open(
                "GET", url, headers=headers, deadline=deadline, what=what, send_token=send_token
            ) as response:
                plan = self._take(response, part, offset, what, deadline)
                if plan is None:
                    return  # the partial file already holds every byte
                mode, expected, gunzip = plan
                self._write_body(response, part, mode, gunzip, what, deadline)
        except _TransportFailure as exc:
            raise _Interrupted(str(exc)) from None
        except FhirTimeout as exc:
            if self._clock() >= deadline:
                raise
            raise _Interrupted(f"no answer within {self._request_timeout} s") from exc
        _check_whole(part, expected, gunzip)

    def _take(
        self, response: httpx2.Response, part: Path, offset: int, what: str, deadline: float
    ) -> tuple[str, int | None, _Gunzip | None] | None:
        """How to store the answer: the file mode, the size the file must reach (None when
        unknown) and the gzip decoder; None when a 416 says the part is already whole."""
        status = response.status_code
        if status == 206 and offset:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            if match is None or int(match[1]) != offset or _decoder(response, what) is not None:
                part.unlink()
                raise _Interrupted("unusable partial response; starting over")
            log.info("Bulk export: resuming the %s at byte %d", what, offset)
            return "ab", None if match[3] == "*" else int(match[3]), None
        if status == 200:  # a server ignoring Range sends everything: start over
            gunzip = _decoder(response, what)
            length = response.headers.get("Content-Length", "")
            known = gunzip is None and length.isascii() and length.isdigit()
            return "wb", int(length) if known else None, gunzip
        if status == 416 and offset:
            match = _UNSATISFIED_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            if match is not None and int(match[1]) == offset:
                return None
            part.unlink()
            raise _Interrupted("range not satisfiable; starting over")
        body = self._read(response, _ERROR_BODY_BYTES, deadline, what)
        diagnostics = _diagnostics(body, _sent_token(response.request))
        if _is_transient(status, body):
            raise _Busy(status, self._retry_after(response.headers), diagnostics)
        raise _DOWNLOAD_ERRORS.error(status, what, diagnostics)

    def _write_body(
        self,
        response: httpx2.Response,
        part: Path,
        mode: str,
        gunzip: _Gunzip | None,
        what: str,
        deadline: float,
    ) -> None:
        """Stream the body to disk chunk by chunk; what arrived stays on disk for a resume."""
        with part.open(mode) as out:
            try:
                for chunk in response.iter_raw():
                    if self._clock() > deadline:
                        raise FhirTimeout(
                            f"The time budget ran out during the {what}; the partial file is "
                            "kept and a re-run resumes it."
                        )
                    out.write(chunk if gunzip is None else gunzip.decode(chunk))
            except httpx2.TransportError as exc:
                raise _Interrupted(_transport_reason(exc)) from None
            except zlib.error:  # a broken gzip stream
                raise _Interrupted("undecodable gzip body") from None
            finally:
                out.flush()
                os.fsync(out.fileno())

    def _file_url(self, value: str, label: str, *, send_token: bool) -> str:
        try:
            url = self._base_url.join(value)
        except httpx2.InvalidURL:
            raise DownloadFailed(f"The manifest's URL for the {label} is not a URL.") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise DownloadFailed(f"The manifest's URL for the {label} is not an http(s) URL.")
        if self._base_url.scheme == "https" and url.scheme != "https":
            raise DownloadFailed(
                f"The manifest's URL for the {label} is plain http while the FHIR server is "
                "https; refused."
            )
        if send_token:
            self._check_origin(url, f"URL for the {label}", error=DownloadFailed)
        return str(url)

    # --- HTTP ---------------------------------------------------------------------------------

    @contextmanager
    def _open(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        deadline: float,
        what: str,
        send_token: bool,
        params: dict[str, str] | None = None,
    ) -> Iterator[httpx2.Response]:
        """A streamed response; on 401 the token is renewed once (it may have expired mid-export)."""
        for attempt in range(2):
            sent = dict(headers)
            if send_token:
                sent["Authorization"] = f"Bearer {self._token(deadline)}"
            timeout = self._timeout(deadline, what)
            try:
                with self._client.stream(
                    method,
                    url,
                    params=params,
                    headers=sent,
                    timeout=timeout,
                    follow_redirects=False,
                ) as response:
                    if response.status_code == 401 and self._auth and send_token and not attempt:
                        log.info("Bulk export: token refused for the %s; renewing it", what)
                        self._auth.invalidate()
                        continue
                    yield response
                    return
            except httpx2.TimeoutException:
                raise FhirTimeout(
                    f"The FHIR server did not answer the {what} within the time budget."
                ) from None
            except httpx2.TransportError as exc:
                raise _TransportFailure(
                    f"The FHIR server could not be reached for the {what} "
                    f"({_transport_reason(exc)})."
                ) from None
            except httpx2.InvalidURL:
                raise FhirUnavailable(f"The URL for the {what} is not usable.") from None

    def _exchange(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        deadline: float,
        what: str,
        params: dict[str, str] | None = None,
    ) -> _Answer:
        """A small JSON request/response (kick-off, status, delete) with a capped body."""
        with self._open(
            method,
            url,
            params=params,
            headers=headers,
            deadline=deadline,
            what=what,
            send_token=self._auth is not None,
        ) as response:
            ok = response.status_code == 200
            limit = self._max_json_bytes if ok else _ERROR_BODY_BYTES
            body = self._read(response, limit, deadline, what, refuse=ok)
            log.debug("Bulk export: %s HTTP %d", what, response.status_code)
            return _Answer(
                response.status_code, response.headers, body, _sent_token(response.request)
            )

    def _read(
        self,
        response: httpx2.Response,
        limit: int,
        deadline: float,
        what: str,
        *,
        refuse: bool = False,
    ) -> bytes:
        """At most ``limit`` bytes; with ``refuse`` a longer body is an error, else it is cut.

        The deadline is checked after every chunk: a server trickling its answer a byte at a
        time never trips the read timeout, and must not hold the export past its budget."""
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            if self._clock() > deadline:
                raise FhirTimeout(
                    f"The time budget ran out while reading the answer to the {what}."
                )
            size += len(chunk)
            if size > limit:
                if refuse:
                    raise FhirUnavailable(f"The answer to the {what} is larger than {limit} bytes.")
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def _token(self, deadline: float) -> str:
        if self._auth is None:
            raise FhirUnauthorized("No token source is configured for this FHIR server.")
        token = self._auth.access_token(deadline)
        if not _is_bearer_token(token):
            raise FhirUnauthorized("The access token is not a valid bearer token; not sent.")
        return token

    def _timeout(self, deadline: float, what: str) -> httpx2.Timeout:
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise FhirTimeout(f"The time budget ran out before the {what}.")
        return httpx2.Timeout(min(self._request_timeout, remaining))

    def _pause(self, delay: float, deadline: float, what: str, *, status_url: str | None) -> None:
        """Wait ``delay`` (at least ``min_poll_interval``) unless that would pass the deadline.

        A server's Retry-After is never shortened: polling sooner than asked is what servers
        throttle. A delay beyond the deadline ends the wait at once rather than sleeping in vain.
        """
        delay = max(self._min_poll, delay)
        if self._clock() + delay > deadline:
            message = f"The time budget ran out waiting for the {what}"
            if status_url is not None:
                raise ExportTimeout(
                    f"{message}; the job may still be running on the server.",
                    status_url=status_url,
                )
            raise FhirTimeout(f"{message}.")
        self._sleep(delay)

    def _retry_after(self, headers: httpx2.Headers) -> float | None:
        """Seconds from a Retry-After header: delay-seconds or an HTTP date (RFC 9110)."""
        value = (headers.get("Retry-After") or "").strip()
        if not value:
            return None
        if value.isascii() and value.isdigit():  # str.isdigit() also accepts '²', '١'...
            return float(value)
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, when.timestamp() - self._wall_clock())

    def _check_origin(
        self,
        url: httpx2.URL,
        what: str,
        error: Callable[[str], FhirError] = FhirUnavailable,
    ) -> None:
        """The token goes only to the FHIR server's origin; anything else is refused."""
        if _origin(url) != _origin(self._base_url):
            raise error(
                f"The {what} points to another origin ({url.scheme}://{url.host}); refused, so "
                "the access token stays with the FHIR server it was issued for."
            )


# --- helpers ----------------------------------------------------------------------------------


def _parse_base(base_url: str) -> httpx2.URL:
    try:
        url = httpx2.URL(base_url)
    except (httpx2.InvalidURL, TypeError):
        raise ValueError("base_url is not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host or url.query or url.fragment:
        raise ValueError("base_url must be an http(s) FHIR base URL without query")
    return url


def _request_key(
    level: str, group_id: str | None, types: Sequence[str], since: datetime | str | None
) -> dict[str, Any]:
    """The export request, validated and normalised (also what ``export.json`` compares)."""
    if level not in ("system", "patient", "group"):
        raise ValueError("level must be 'system', 'patient' or 'group'")
    if level == "group":
        if not group_id or not FHIR_ID.fullmatch(group_id):
            raise ValueError("a group-level export needs group_id, a FHIR id")
    elif group_id is not None:
        raise ValueError("group_id is only for level='group'")
    if isinstance(types, str):
        raise ValueError("types must be a list of resource types, e.g. ['Patient']")
    for rtype in types:
        if not _RESOURCE_TYPE.fullmatch(rtype):
            raise ValueError(f"{rtype!r} is not a FHIR resource type name")
    return {
        "level": level,
        "group_id": group_id,
        "types": sorted(set(types)),
        "since": _format_since(since),
    }


def _format_since(since: datetime | str | None) -> str | None:
    if since is None:
        return None
    if isinstance(since, datetime):
        if since.tzinfo is None:
            raise ValueError("since must be timezone-aware (a naive time is ambiguous)")
        utc = since.astimezone(UTC)
        return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
    if not _INSTANT.fullmatch(since):
        raise ValueError("since must be a FHIR instant, e.g. a manifest's transactionTime")
    return since


def _plan(
    entries: Sequence[OutputFile], directory: Path, kind: str
) -> Iterator[tuple[OutputFile, Path, str]]:
    """Stable file names from manifest order: ``Type.ndjson``, or ``Type.<n>.ndjson`` if several."""
    totals = Counter(entry.type for entry in entries)
    seen: Counter[str] = Counter()
    for entry in entries:
        seen[entry.type] += 1
        if totals[entry.type] == 1:
            name, label = f"{entry.type}.ndjson", f"{entry.type} {kind}"
        else:
            n = seen[entry.type]
            name = f"{entry.type}.{n}.ndjson"
            label = f"{entry.type} {kind} {n} of {totals[entry.type]}"
        yield entry, directory / name, label


def _layout(manifest: Manifest, directory: Path) -> Iterator[tuple[str, OutputFile, Path, str]]:
    """Where each file of the manifest goes, by kind: output, then error, then deleted files."""
    for entry, target, label in _plan(manifest.output, directory, "file"):
        yield "output", entry, target, label
    for entry, target, label in _plan(manifest.error, directory / ERROR_DIR, "error file"):
        yield "error", entry, target, label
    for entry, target, label in _plan(manifest.deleted, directory / DELETED_DIR, "deleted file"):
        yield "deleted", entry, target, label


def _forget_job(directory: Path, state: dict[str, Any]) -> dict[str, Any]:
    """Drop a job whose files the server no longer has: its files here (complete or partial)
    and its record. Mixed with a new job's files they would make both wrong, and the new job
    exports the same request again, so nothing is lost."""
    for _, _, target, _ in _layout(Manifest.parse(state["manifest"]), directory):
        target.unlink(missing_ok=True)
        target.with_name(target.name + ".part").unlink(missing_ok=True)
    state = {"base_url": state["base_url"], "request": state["request"]}
    _write_state(directory, state)
    return state


def _check_whole(part: Path, expected: int | None, gunzip: _Gunzip | None) -> None:
    """Raise _Interrupted unless the transfer is proven whole: by the size the server gave
    (Content-Length, Content-Range) or else by the end of the gzip stream, if gzipped, and by a
    last line that ends with a newline (NDJSON ends every line with one): a connection closed
    half-way looks like the end of a body that has no size."""
    size = part.stat().st_size
    if expected is not None:
        if size != expected:
            raise _Interrupted(f"{size} of {expected} bytes")
        return
    if gunzip is not None and not gunzip.ended:
        raise _Interrupted("the gzip stream stopped before its end")
    if size and _last_byte(part) != b"\n":
        raise _Interrupted("the file ends inside a line and no size says it is whole")


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as data:
        data.seek(-1, os.SEEK_END)
        return data.read(1)


class _Gunzip:
    """gzip decoding that knows whether the stream reached its end: httpx2's own decoder takes
    a gzip body cut short for a whole one."""

    def __init__(self) -> None:
        self._stream = zlib.decompressobj(zlib.MAX_WBITS | 16)

    def decode(self, data: bytes) -> bytes:
        decoded = []
        while data:
            if self._stream.eof:  # another gzip member follows (RFC 1952 allows several)
                self._stream = zlib.decompressobj(zlib.MAX_WBITS | 16)
            decoded.append(self._stream.decompress(data))
            data = self._stream.unused_data
        return b"".join(decoded)

    @property
    def ended(self) -> bool:
        return self._stream.eof


def _decoder(response: httpx2.Response, what: str) -> _Gunzip | None:
    """A decoder for the body's Content-Encoding: none, or gzip (the only one asked for)."""
    coding = response.headers.get("Content-Encoding", "").strip().lower()
    if coding in ("", "identity"):
        return None
    if coding in ("gzip", "x-gzip"):
        return _Gunzip()
    raise DownloadFailed(
        f"The FHIR server sent the {what} with Content-Encoding {_printable(coding, 20)!r}, "
        "which was not asked for; refused."
    )


def _outcome_severities(paths: Iterable[Path]) -> Counter[str]:
    """The error files' OperationOutcomes by their gravest issue: error (fatal counts as one),
    warning or information. One that says no known severity counts as an error, so nothing
    the server could not export is taken for a remark."""
    found: Counter[str] = Counter()
    for path in paths:
        with path.open("rb") as lines:
            for line in lines:
                if line.strip():
                    gravest = min((_GRAVITY.get(s, 0) for s in _severities(line)), default=0)
                    found[("error", "warning", "information")[gravest]] += 1
    return found


def _severities(line: bytes) -> list[object]:
    """The issue severities of one OperationOutcome line; none for a line that is not one."""
    try:
        outcome = orjson.loads(line)
    except orjson.JSONDecodeError:
        return []
    issues = outcome.get("issue") if isinstance(outcome, dict) else None
    if not isinstance(issues, list):
        return []
    return [issue.get("severity") if isinstance(issue, dict) else None for issue in issues]


def _count_resources(path: Path) -> int:
    """Non-empty lines, read line by line (one resource in memory at a time)."""
    with path.open("rb") as lines:
        return sum(1 for line in lines if line.strip())


def _read_state(directory: Path) -> dict[str, Any] | None:
    path = directory / STATE_FILE
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ExportDirectoryInUse(
            f"The directory's {STATE_FILE} is unreadable; use a new directory."
        ) from None
    if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
        raise ExportDirectoryInUse(
            f"The directory's {STATE_FILE} is not from this client; use a new directory."
        )
    return state


def _write_state(directory: Path, state: dict[str, Any]) -> None:
    """Atomically (write, then rename), so a crash never leaves half a state file."""
    path = directory / STATE_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**state, "version": _STATE_VERSION}, indent=2), encoding="utf-8")
    tmp.replace(path)


def _json(body: bytes, what: str) -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise FhirUnavailable(f"The FHIR server answered the {what} with invalid JSON.") from None


def _issue_codes(body: bytes) -> set[str]:
    try:
        outcome = orjson.loads(body)
    except orjson.JSONDecodeError:
        return set()
    if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
        return set()
    return {
        issue["code"]
        for issue in outcome.get("issue") or []
        if isinstance(issue, dict) and isinstance(issue.get("code"), str)
    }


def _is_transient(status: int, body: bytes) -> bool:
    """429/503, or an error whose OperationOutcome says ``transient`` (the IG's retry signal)."""
    if status in (429, 503):
        return True
    return status >= 400 and bool(_issue_codes(body) & _TRANSIENT_CODES)


def _busy_error(status: int, what: str, times: int, diagnostics: str | None) -> FhirUnavailable:
    """Throttled or unavailable for too long; a re-run asks again (the job did not fail)."""
    return FhirUnavailable(
        f"The FHIR server answered the {what} with HTTP {status} {times} times in a row; a "
        "re-run picks the export up again.",
        status=status,
        diagnostics=diagnostics,
    )


def _complete(body: bytes, what: str) -> Manifest:
    manifest = Manifest.parse(_json(body, what))
    log.info(
        "Bulk export complete: %d output and %d error file(s)",
        len(manifest.output),
        len(manifest.error),
    )
    return manifest


def _report_progress(headers: httpx2.Headers, on_progress: Callable[[str], None] | None) -> None:
    progress = _printable(headers.get("X-Progress"))
    if progress:
        log.info("Bulk export in progress: %s", progress)
        if on_progress is not None:
            on_progress(progress)


def _sent_token(request: httpx2.Request) -> str:
    """The bearer token a request carried, to blank it where a server echoes it back."""
    return request.headers.get("Authorization", "").removeprefix("Bearer ")


@dataclass(frozen=True, slots=True)
class _Answer:
    """A small response read whole (kick-off, status, delete)."""

    status: int
    headers: httpx2.Headers
    body: bytes
    token: str = field(repr=False)
    """The token sent: a server may echo it in its OperationOutcome."""

    @property
    def diagnostics(self) -> str | None:
        return _diagnostics(self.body, self.token)


# HTTP error statuses -> FhirErrors, per kind of request (see StatusErrors for the order).
_REQUEST_ERRORS = StatusErrors(
    refused="The FHIR server refused the access for the {what} (HTTP {status})."
)
_GROUP_ERRORS = replace(
    _REQUEST_ERRORS,
    gone=(FhirNotFound, "The FHIR server has no such Group for the {what} (HTTP {status})."),
)
_JOB_GONE = (
    "The FHIR server does not know the export job (HTTP {status}): expired, deleted or lost in a "
    "restart."
)
_STATUS_ERRORS = replace(
    _REQUEST_ERRORS,
    gone=(ExportNotFound, _JOB_GONE),
    rejects=False,
    failed=(ExportFailed, "The FHIR server reports that the export failed (HTTP {status})."),
)
_FILE_GONE = (
    "The FHIR server no longer has the file for the {what} (HTTP {status}): the job expired or "
    "was deleted; a re-run of the export starts a new one."
)
_DOWNLOAD_ERRORS = replace(
    _REQUEST_ERRORS,
    gone=(ExportExpired, _FILE_GONE),
    redirects=False,
    rejects=False,
    failed=(DownloadFailed, "The FHIR server failed the {what} (HTTP {status})."),
)


def _printable(value: str | None, limit: int = 100) -> str:
    """Server text for logs: printable characters only, shortened (no log injection)."""
    if not value:
        return ""
    return "".join(ch for ch in value if ch.isprintable())[:limit]


def _is_bearer_token(token: str) -> bool:
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/")
    stripped = token.rstrip("=")
    return bool(stripped) and all(ch in allowed for ch in stripped)
