"""Make the repository's ``benchmarks`` folder importable: it is a dev tool, not an installed
package (pyproject lists only the product packages), and pytest does not put the repository
root on sys.path by itself."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
