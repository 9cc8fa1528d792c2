"""Progress bars for the command's long steps (sweep, ingest): on a terminal only.

One style for every command: a spinner, the step, a bar when the step knows its size, the count
and the elapsed time, on stderr so stdout stays the command's output. Off when stderr is not a
terminal (a pipe, a log file, CI) or when the user says ``--quiet``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


def wanted(quiet: bool) -> bool:
    """Bars only for a person watching: stderr is a terminal and ``--quiet`` was not given."""
    return not quiet and sys.stderr.isatty()


def progress_for(quiet: bool) -> Bars | None:
    """The ingest's progress (``start`` / ``advance`` / ``finish``): bars on a terminal, else
    None (the ingest's silent default)."""
    return Bars(enabled=True, started=True) if wanted(quiet) else None


class Bars:
    """Steps shown one after another; each finished step stays on screen with its time.

    Implements both the sweep's :class:`engine.population.run.Progress` (``task`` / ``done``,
    used as a context manager) and the ingest's ``Progress`` (``start`` / ``advance`` /
    ``finish``). When disabled, every call does nothing.
    """

    def __init__(self, enabled: bool = True, started: bool = False) -> None:
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._advance: Callable[[int], None] = _nothing
        if enabled:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            if started:
                self._progress.start()

    def __enter__(self) -> Bars:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.done()
        if self._progress is not None:
            self._progress.stop()

    def task(self, description: str, total: int | None) -> Callable[[int], None]:
        """Start a step (``total`` None: size unknown, a spinner only); returns its advance."""
        progress = self._progress
        if progress is None:
            return _nothing
        self.done()
        task = self._task = progress.add_task(description, total=total)
        return lambda n: progress.advance(task, n)

    def done(self) -> None:
        """Finish the current step: its bar full, its clock stopped."""
        if self._progress is None or self._task is None:
            return
        task = self._progress.tasks[self._task]
        self._progress.update(self._task, total=task.total or task.completed or 1)
        self._progress.update(self._task, completed=task.total or 1)
        self._progress.stop_task(self._task)
        self._task = None

    # -- the ingest's interface ---------------------------------------------------------------

    def start(self, step: str, total: int | None = None) -> None:
        """A step begins; ``total`` units (bytes) if it reports any."""
        self._advance = self.task(step, total)

    def advance(self, amount: int) -> None:
        self._advance(amount)

    def finish(self) -> None:
        """The whole job is over: the last step done, the display stopped."""
        self.done()
        if self._progress is not None:
            self._progress.stop()


def _nothing(n: int) -> None:
    return None
