"""Data in the project's shared/ folder, which CI places beside the clone (../shared).

A test that needs it calls :func:`shared_data`: without the folder the test is skipped with the
path it looked at, or fails when ``VEJVISER_REQUIRE_SHARED_DATA=1`` (``scripts/test.sh`` sets it,
so CI cannot pass by skipping).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data"
SYNTHEA = SHARED_DATA / "synthea-r4-100"
REQUIRE = "VEJVISER_REQUIRE_SHARED_DATA"


def shared_data(path: Path) -> Path:
    """``path`` if it is a directory; else skip the test, or fail it when REQUIRE is set."""
    if path.is_dir():
        return path
    message = f"shared data not found at {path} (CI places shared/ beside the clone)"
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{message}; {REQUIRE}=1 says it must be there", pytrace=False)
    pytest.skip(message)
