"""``vejviser serve`` with a cProfile profiler switched by signals (for ``bench_cds_hooks``).

Why not ``python -m cProfile``: that profiles start-up (imports, compiling the guidelines) and
warm-up along with the requests, and with a few hundred requests start-up is a large share of
the result. Here the profiler starts on SIGUSR1 and stops and writes its file on SIGUSR2, so the
caller profiles exactly the requests it counts. Only the event-loop thread is profiled, which is
where the request handling runs (the feedback store's worker thread is not).

Run: ``python -m benchmarks.profiled_serve OUTPUT.prof serve --no-auth --port ...`` (the
arguments after the output file are those of ``vejviser``).
"""

from __future__ import annotations

import cProfile
import signal
import sys
from pathlib import Path
from types import FrameType


def main() -> None:
    output = Path(sys.argv[1])
    profiler = cProfile.Profile()

    def start(signum: int, frame: FrameType | None) -> None:
        profiler.enable()

    def stop(signum: int, frame: FrameType | None) -> None:
        profiler.disable()
        profiler.dump_stats(output)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    from service.cli import app

    sys.argv = ["vejviser", *sys.argv[2:]]
    app()


if __name__ == "__main__":
    main()
