"""The garbage collector and a long-running service: lasting state is kept out of its way.

Why: a CPython full collection traverses every object the collector tracks, the loaded guideline
set, the compiled rules and every imported module included. A CDS Hooks request allocates enough
(tens of thousands of dicts for a 500-resource prefetch) to set one off every few requests, and
each one held the request up by about 50 ms: the p95 of a 500-resource patient's parse was 47 ms
against a median of 2.5 ms (docs/benchmarks.md). Objects frozen by :func:`gc.freeze` are left out
of every collection; what a request allocates is still collected as before.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Collect once, then freeze everything alive: call it when the service's lasting state is
    loaded (at startup, after a guideline swap).

    Unfreezes first, so that what an earlier call kept (the guideline set a swap replaced) is
    collected now rather than kept for ever."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
