"""Live guidelines: a directory or git branch, watched, validated whole and swapped atomically.

The service answers every request from one :class:`Snapshot`: a loaded guideline set, the engine
compiled from it and where it came from. :class:`GuidelinePublisher` holds the snapshot in service
and replaces it by a single reference assignment when a changed source loads cleanly and passes
its own test cases, so a request that read the reference at its start finishes on the set it
started with. A change that does not load, or whose cases fail, is rejected as a whole
(``file:line:column`` errors kept for ``GET /guidelines``) and the last good snapshot stays in
service.

Which versions apply is decided by the instant, not the date: a version whose ``effective.from``
is a few seconds away switches on by itself, with no reload. The snapshot knows every instant at
which the versions in force change and caches the in-force tuple until the next one, so the cost
per request is a comparison of two datetimes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import anyio

from engine.cases import case_failures, run_cases
from engine.patient import PatientEngine
from rules.effective import danish_date
from rules.errors import RuleError, RuleFileError
from rules.guideline_set import GuidelineSet, load_guidelines
from rules.tree import CompiledGuideline
from service import heap
from service.request_id import REQUEST_ID

log = logging.getLogger("vejviser.guidelines")

Clock = Callable[[], dt.datetime]
NO_GUIDELINES = "holds no guideline (rule files are *.yaml): nothing to serve"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="milliseconds")


# --- structured log lines -------------------------------------------------------------------------


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """One structured log record: ``event`` plus fields (rendered as JSON by :class:`JsonFormatter`)."""
    log.log(level, event, extra={"fields": {"event": event, **fields}})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            body["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            body.update(fields)
        else:
            body["message"] = record.getMessage()
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False, default=str)


SERVICE_LOGGERS = (
    "vejviser.guidelines",
    "vejviser.service",
    "vejviser.access",
    "service",
    "uvicorn",
)
"""The service's loggers: ``vejviser.guidelines`` (loads), ``vejviser.service`` (unexpected
errors), ``vejviser.access`` (one line per request), ``service.auth`` (why a client was
refused), ``service.feedback`` (counts); and uvicorn's own (start, stop, a port in use), so that
every line on stderr is JSON. None logs tokens, JWTs or CPR numbers."""


def configure_logging(stream: Any = None) -> None:
    """Send the service's log lines at INFO and above to stderr as JSON (idempotent; ``vejviser
    serve`` calls it). Why every service logger: a refused client's reason (expired, wrong
    audience, untrusted issuer) is logged at INFO by ``service.auth``, and without a handler of
    its own it reached no log, so an operator could not tell one 401 from another."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler._vejviser_json = True  # type: ignore[attr-defined]
    for name in SERVICE_LOGGERS:
        logger = logging.getLogger(name)
        if any(getattr(h, "_vejviser_json", False) for h in logger.handlers):
            continue
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


# --- the snapshot ---------------------------------------------------------------------------------


class Snapshot:
    """One loaded guideline set, its engine and its origin: immutable once built.

    ``in_force_at`` is the only per-request work: the versions in force change only at the
    sorted ``switches`` instants, so the tuple for the current interval is cached (one tuple
    assignment, safe across threads: a racing request computes the same value).
    """

    __slots__ = (
        "_window",
        "commit",
        "engine",
        "fingerprint",
        "guidelines",
        "loaded_at",
        "relative",
        "switches",
    )

    def __init__(
        self,
        guidelines: GuidelineSet,
        fingerprint: str,
        loaded_at: dt.datetime,
        commit: str | None = None,
        engine: PatientEngine | None = None,
        relative: Callable[[str], str] = str,
    ) -> None:
        self.guidelines = guidelines
        self.relative = relative  # file names as the author knows them (inside the repository)
        self.engine = engine or PatientEngine(guidelines)
        self.fingerprint = fingerprint
        self.loaded_at = loaded_at
        self.commit = commit
        self.switches = guidelines.switches
        self._window: tuple[dt.datetime | None, dt.datetime | None, tuple[CompiledGuideline, ...]]
        self._window = (None, None, ())
        self._window = self._compute(loaded_at)

    def in_force_at(self, moment: dt.datetime) -> tuple[CompiledGuideline, ...]:
        """The versions that apply at an aware instant (the same tuple object within an interval)."""
        start, end, versions = self._window
        if (start is None or start <= moment) and (end is None or moment < end):
            return versions
        window = self._compute(moment)
        self._window = window
        return window[2]

    def _compute(
        self, moment: dt.datetime
    ) -> tuple[dt.datetime | None, dt.datetime | None, tuple[CompiledGuideline, ...]]:
        i = bisect_right(self.switches, moment)
        start = self.switches[i - 1] if i else None
        end = self.switches[i] if i < len(self.switches) else None
        return start, end, self.guidelines.in_force_at(moment)


def version_status(guideline: CompiledGuideline, moment: dt.datetime) -> str:
    """active (in force now) | dormant (not yet) | retired (ended, or status retired) | draft."""
    if guideline.status == "draft":
        return "draft"
    if guideline.status == "retired" or (guideline.ends is not None and guideline.ends <= moment):
        return "retired"
    if moment < guideline.starts:
        return "dormant"
    return "active"


# --- sources --------------------------------------------------------------------------------------


class SourceError(RuntimeError):
    """The source cannot be read right now (git fetch failed, directory missing)."""


@dataclass(frozen=True, slots=True)
class Checkout:
    """One consistent state of a source: the directory to load and what identifies it."""

    directory: Path
    fingerprint: str
    commit: str | None = None

    def relative(self, text: str) -> str:
        """File names in an exported commit, as paths inside the repository."""
        if self.commit is None:
            return text
        absolute = self.directory.resolve()
        prefixes = [str(absolute)]
        with contextlib.suppress(ValueError):  # how load_guidelines shows paths below the cwd
            prefixes.append(str(absolute.relative_to(Path.cwd())))
        for prefix in prefixes:
            text = text.replace(prefix + os.sep, "")
        return text


class GuidelineSource(Protocol):
    def describe(self) -> dict[str, Any]:
        """Where the guidelines come from, safe to show and log (no credentials)."""
        ...

    def current(self) -> str:
        """A cheap fingerprint of the source's current state (polled)."""
        ...

    def checkout(self) -> Checkout:
        """A directory holding one consistent state, and its fingerprint."""
        ...


def directory_fingerprint(directory: Path) -> str:
    """SHA-256 over the relative path and content of every ``*.yaml`` below ``directory``.

    Contents, not modification times: an edit that keeps size and mtime (fast editors, copied
    files) is still seen. A guideline library is small (well under a megabyte), so reading it
    every poll costs a millisecond or two.
    """
    digest = hashlib.sha256()
    if not directory.is_dir():
        raise SourceError(f"{directory} is not a directory")
    for path in sorted(directory.rglob("*.yaml")):
        with contextlib.suppress(OSError):  # removed while we looked: the next poll sees it
            content = path.read_bytes()
            digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(content).digest())
    return digest.hexdigest()


class DirectorySource:
    """A guideline directory on disk, watched by content fingerprint."""

    settle_seconds = 0.1  # a change must hold still this long before it is loaded

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def describe(self) -> dict[str, Any]:
        return {"kind": "directory", "path": str(self.directory)}

    def current(self) -> str:
        return directory_fingerprint(self.directory)

    def checkout(self) -> Checkout:
        return Checkout(self.directory, directory_fingerprint(self.directory))


_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")


def redact(text: str) -> str:
    """Remove user names and passwords from every URL in ``text``."""
    return _USERINFO.sub(r"\g<scheme>", text)


def safe_url(url: str) -> str:
    """The repository URL without credentials, for status pages and logs."""
    parts = urlsplit(url)
    if parts.scheme and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return redact(url)


class GitSource:
    """A branch of a git repository, fetched with the git client into a bare cache.

    Every poll runs ``git fetch`` of the branch; a new commit is exported (``git archive``) into a
    fresh directory named after the commit, so a load always reads exactly one commit, never a
    working tree half-way through an update. The two newest exports are kept.
    """

    KEEP = 2

    def __init__(
        self,
        url: str,
        branch: str,
        state_directory: Path,
        subdirectory: str = "",
        timeout: float = 120.0,
    ) -> None:
        self.url = url
        self.branch = branch
        self.subdirectory = subdirectory.strip("/")
        self.timeout = timeout
        key = hashlib.sha256(f"{safe_url(url)}#{branch}".encode()).hexdigest()[:16]
        self.root = Path(state_directory).resolve() / "git" / key
        self.mirror = self.root / "mirror.git"
        self.exports = self.root / "commits"

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "git",
            "url": safe_url(self.url),
            "branch": self.branch,
            **({"path": self.subdirectory} if self.subdirectory else {}),
        }

    def _git(self, *args: str, capture_bytes: bool = False) -> Any:
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"}
        try:
            result = subprocess.run(
                ["git", *args],
                capture_output=True,
                env=env,
                timeout=self.timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SourceError(redact(f"git {args[0]} failed: {exc}")) from None
        if result.returncode != 0:
            message = result.stderr.decode(errors="replace").strip().splitlines()
            raise SourceError(redact(f"git {args[0]} failed: {' '.join(message[-3:])}"))
        return result.stdout if capture_bytes else result.stdout.decode().strip()

    def current(self) -> str:
        """Fetch the branch; its commit sha is the fingerprint."""
        if not (self.mirror / "HEAD").exists():
            self.mirror.mkdir(parents=True, exist_ok=True)
            self._git("init", "--bare", "--quiet", str(self.mirror))
        ref = f"refs/heads/{self.branch}"
        self._git(
            "--git-dir", str(self.mirror), "fetch", "--quiet", "--force", "--no-tags",
            "--", self.url, f"+{ref}:{ref}",
        )  # fmt: skip
        return self._git(
            "--git-dir", str(self.mirror), "rev-parse", "--verify", f"{ref}^{{commit}}"
        )

    def checkout(self) -> Checkout:
        commit = self.current()
        target = self.exports / commit
        if not target.is_dir():
            self.exports.mkdir(parents=True, exist_ok=True)
            archive = self._git(
                "--git-dir", str(self.mirror), "archive", "--format=tar", commit,
                capture_bytes=True,
            )  # fmt: skip
            # A private directory first, renamed into place: another worker on the same state
            # directory may be exporting the same commit right now.
            partial = Path(tempfile.mkdtemp(prefix=f".{commit}.", dir=self.exports))
            try:
                with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                    tar.extractall(partial, filter="data")
                partial.rename(target)
            except OSError:
                if not target.is_dir():
                    raise
            finally:
                shutil.rmtree(partial, ignore_errors=True)
        self._prune(keep=target)
        directory = target / self.subdirectory if self.subdirectory else target
        return Checkout(directory, commit, commit)

    def _prune(self, keep: Path) -> None:
        exports = sorted(
            (p for p in self.exports.iterdir() if p.is_dir() and not p.name.startswith(".")),
            key=lambda p: p.stat().st_mtime,
        )
        for old in exports[: -self.KEEP]:
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)


# --- the publisher --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rejection:
    """A change that did not load: when, which state, and every error as ``file:line:col: ...``."""

    at: dt.datetime
    fingerprint: str
    commit: str | None
    errors: tuple[str, ...]


class GuidelinePublisher:
    """The snapshot in service, how it got there, and the loop that keeps it current.

    ``snapshot`` is read once per request; :meth:`refresh` is the only writer (one at a time).
    """

    def __init__(
        self,
        source: GuidelineSource,
        poll_seconds: float = 0.0,
        clock: Clock = utc_now,
    ) -> None:
        self.source = source
        self.poll_seconds = poll_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self.last_checked_at: dt.datetime | None = None
        self.last_load_at: dt.datetime | None = None
        self.last_swap_at: dt.datetime | None = None
        self.rejected: Rejection | None = None
        self.source_error: tuple[dt.datetime, str] | None = None
        self.loads = self.swaps = self.rejections = 0
        checkout = source.checkout()
        # The first load must succeed: a service with no guidelines is no service (raises).
        first = self._load(checkout, first=True)
        assert first is not None  # a failed first load raised
        self.snapshot: Snapshot = first

    def now(self) -> dt.datetime:
        return self.clock()

    def current(self) -> tuple[Snapshot, dt.datetime]:
        """The snapshot for one request and the instant it is evaluated at (read once)."""
        return self.snapshot, self.clock()

    def refresh(self) -> str:
        """Check the source once: ``unchanged``, ``swapped``, ``rejected``, ``unavailable`` or
        ``retry`` (files changed while they were read: loaded again on the next poll)."""
        with self._lock:
            self.last_checked_at = self.now()
            try:
                fingerprint = self.source.current()
                if fingerprint == self.snapshot.fingerprint:
                    self.rejected = None  # a rejected change was reverted: nothing is pending
                    self.source_error = None
                    return "unchanged"
                if self.rejected is not None and fingerprint == self.rejected.fingerprint:
                    self.source_error = None
                    return "unchanged"
                # A file being written right now (truncated, half its bytes) must not be loaded:
                # the state must hold still for a moment before and during the load.
                time.sleep(getattr(self.source, "settle_seconds", 0.0))
                checkout = self.source.checkout()
            except (SourceError, OSError) as exc:
                message = redact(str(exc))
                if self.source_error is None or self.source_error[1] != message:
                    log_event(
                        "guidelines.source_unavailable",
                        logging.WARNING,
                        source=self.source.describe(),
                        error=message,
                    )
                self.source_error = (self.now(), message)
                return "unavailable"
            self.source_error = None
            if checkout.fingerprint != fingerprint:
                log_event(
                    "guidelines.changed_during_load",
                    source=self.source.describe(),
                    fingerprint=checkout.fingerprint,
                )
                return "retry"
            rejections = self.rejections
            if self._load(checkout) is not None:
                return "swapped"
            return "rejected" if self.rejections > rejections else "retry"

    def _load(self, checkout: Checkout, first: bool = False) -> Snapshot | None:
        started = time.perf_counter()
        at = self.now()
        self.last_load_at = at
        self.loads += 1
        base = {
            "source": self.source.describe(),
            "fingerprint": checkout.fingerprint,
            **({"commit": checkout.commit} if checkout.commit else {}),
        }
        log_event("guidelines.load", **base)
        try:
            guidelines = load_guidelines(checkout.directory)
            if not guidelines.files:  # an empty folder (a mount not there yet) is no guideline set
                raise RuleFileError([RuleError(str(checkout.directory), None, NO_GUIDELINES)])
            snapshot = Snapshot(
                guidelines, checkout.fingerprint, at, checkout.commit, relative=checkout.relative
            )
            failed = case_failures(run_cases(guidelines, snapshot.engine))
            if failed:  # the set's own test cases are part of what makes it valid
                raise RuleFileError(failed)
            after = self._settled(checkout)
        except RuleFileError as exc:
            errors = tuple(checkout.relative(str(e)) for e in exc.errors)
            if first:
                log_event("guidelines.rejected", logging.ERROR, **base, errors=list(errors))
                raise
            self.rejected = Rejection(at, checkout.fingerprint, checkout.commit, errors)
            self.rejections += 1
            log_event(
                "guidelines.rejected",
                logging.WARNING,
                **base,
                error_count=len(errors),
                errors=list(errors),
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
                serving=self.snapshot.fingerprint,
            )
            return None
        if after != checkout.fingerprint:
            # Files changed while they were read: the set may mix two states. Try again next poll.
            log_event("guidelines.changed_during_load", logging.INFO, **base)
            if first:
                return self._load(self.source.checkout(), first=True)
            return None
        previous = None if first else self.snapshot
        self.snapshot = snapshot  # the swap: one reference assignment
        self.last_swap_at = self.now()
        self.swaps += 1
        if self.rejected is not None and self.rejected.at <= at:
            self.rejected = None
        in_force = snapshot.in_force_at(self.last_swap_at)
        log_event(
            "guidelines.swap",
            **base,
            previous=previous.fingerprint if previous else None,
            guidelines=len(guidelines.files),
            valuesets=len(guidelines.valuesets),
            in_force=len(in_force),
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return snapshot

    def _settled(self, checkout: Checkout) -> str | None:
        """The source's fingerprint after a load (a commit cannot change under us)."""
        if checkout.commit is not None:
            return checkout.fingerprint
        try:
            return self.source.current()
        except (SourceError, OSError):
            return None

    async def watch(self) -> None:
        """Poll the source every ``poll_seconds`` (loads run in a worker thread) until cancelled."""
        if self.poll_seconds <= 0:
            return
        while True:
            await anyio.sleep(self.poll_seconds)
            try:
                if await anyio.to_thread.run_sync(self.refresh) == "swapped":
                    heap.settle()  # the new set is lasting state; the one it replaced can go
            except Exception:  # never let one bad poll stop the watching
                log.exception(
                    "guidelines.poll_failed", extra={"fields": {"event": "guidelines.poll_failed"}}
                )

    def rejection_pending(self) -> bool:
        """The last change tried was rejected and nothing newer is in service."""
        return self.rejected is not None and (
            self.last_swap_at is None or self.rejected.at >= self.last_swap_at
        )

    def status(self) -> dict[str, Any]:
        """The body of ``GET /guidelines``."""
        snapshot, now = self.current()
        versions = [
            {
                "id": g.id,
                "version": g.version,
                "title": {"da": g.title.da, "en": g.title.en},
                "status": version_status(g, now),
                "effective_from": g.effective_from.isoformat(),
                "effective_until": g.effective_until.isoformat() if g.effective_until else None,
                "file": snapshot.relative(g.file),
                "content_hash": g.content_hash,
            }
            for g in sorted(snapshot.guidelines.guidelines, key=lambda g: (g.id, g.starts))
        ]
        upcoming = [m for m in snapshot.switches if m > now]
        body: dict[str, Any] = {
            "source": {**self.source.describe(), "commit": snapshot.commit},
            "now": _iso(now),
            "poll_seconds": self.poll_seconds,
            "fingerprint": snapshot.fingerprint,
            "loaded_at": _iso(snapshot.loaded_at),
            "last_checked_at": _iso(self.last_checked_at),
            "last_load_at": _iso(self.last_load_at),
            "last_swap_at": _iso(self.last_swap_at),
            "next_switch_at": _iso(upcoming[0]) if upcoming else None,
            "as_of": danish_date(now).isoformat(),
            "in_force": len(snapshot.in_force_at(now)),
            "versions": versions,
            "valuesets": len(snapshot.guidelines.valuesets),
            "rejected": None,
            "source_error": None,
        }
        rejected = self.rejected if self.rejection_pending() else None
        if rejected is not None:
            body["rejected"] = {
                "at": _iso(rejected.at),
                "fingerprint": rejected.fingerprint,
                "commit": rejected.commit,
                "errors": list(rejected.errors),
            }
        if self.source_error is not None:
            body["source_error"] = {"at": _iso(self.source_error[0]), "error": self.source_error[1]}
        return body


def source_from_settings(settings: Any) -> GuidelineSource:
    """A git source when ``guidelines_git`` is set, else the ``guidelines`` directory."""
    if settings.guidelines_git:
        return GitSource(
            settings.guidelines_git,
            settings.guidelines_branch,
            settings.state_directory,
            settings.guidelines_git_path,
        )
    return DirectorySource(settings.guidelines)
