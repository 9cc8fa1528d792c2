"""Where a store keeps the Bulk Data exports it ingests straight from a FHIR server.

Inside the store directory, beside the facts (the store swap leaves them alone)::

    exports/current/    the export being made or ingested: the bulk client's resumable state
    exports/last.json   per server base URL: the transactionTime of the last export ingested
    exports/errors-<transactionTime>/   the server's error files of an ingested export, if any

Why a new directory per export: the bulk client resumes whatever its directory holds, so a fixed
directory would ingest last month's files again instead of asking the server. ``current`` is
removed only after its ingest succeeded, so an export or an ingest killed half-way is picked up
by the next run with the same options. ``last.json`` is written at that moment too: an
incremental export (``_since``) then starts where the data in the store end, never later.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from fhir_adapter.bulk import ERROR_DIR

EXPORTS = "exports"
CURRENT = "current"
LAST = "last.json"


def current_export(store: Path) -> Path:
    """The directory the next (or the unfinished) export of ``store`` goes to."""
    return store / EXPORTS / CURRENT


def last_transaction_time(store: Path, base_url: str) -> str | None:
    """The transactionTime of the last export from ``base_url`` ingested into ``store``."""
    value = _read(store).get(base_url.rstrip("/"))
    return value if isinstance(value, str) else None


def record_ingested(store: Path, base_url: str, transaction_time: str) -> Path | None:
    """The current export is in the store: remember its time, then drop its files.

    The server's error files (OperationOutcomes: what it could not export) are kept, in
    ``exports/errors-<transactionTime>/``, which is returned; None when there were none."""
    kept = None
    errors = current_export(store) / ERROR_DIR
    if errors.is_dir() and any(errors.iterdir()):
        kept = store / EXPORTS / f"errors-{transaction_time.replace(':', '')}"
        shutil.rmtree(kept, ignore_errors=True)
        errors.rename(kept)
    recorded = {**_read(store), base_url.rstrip("/"): transaction_time}
    path = store / EXPORTS / LAST
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{LAST}.partial")
    partial.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    partial.replace(path)
    shutil.rmtree(current_export(store), ignore_errors=True)
    return kept


def _read(store: Path) -> dict[str, object]:
    try:
        found = json.loads((store / EXPORTS / LAST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{store / EXPORTS / LAST} cannot be read: {exc}") from None
    if not isinstance(found, dict):
        raise ValueError(f"{store / EXPORTS / LAST} is not a JSON object")
    return found
