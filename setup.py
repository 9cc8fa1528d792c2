"""Compiles the bulk ingest's hot modules with mypyc; everything else is in pyproject.toml.

Why: reading NDJSON is pure Python dict work, some 50,000 resources per CPU-second; mypyc turns the
same source into C and reads about 1.5x as many (docs/decisions/0010). The source stays the one
normalisation of every path (CDS Hooks, bulk ingest, tests). Without a C compiler, or with
VEJVISER_PURE_PYTHON=1, the install is pure Python and only slower.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import setup

COMPILED = ("fhir_adapter/normalise.py", "engine/population/chunks.py")
RECORD = Path("fhir_adapter/compiled.json")  # read by fhir_adapter.compiled
BUILDS = {"build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install"}


def _compiler() -> str | None:
    command = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shutil.which(command.split()[0])


def _remove_earlier_build() -> None:
    """An editable install compiled in place; a pure-Python reinstall must not leave it there."""
    RECORD.unlink(missing_ok=True)
    for path in map(Path, COMPILED):
        for built in path.parent.glob(f"{path.stem}.*.so"):
            built.unlink()
    for built in Path().glob("vejviser_compiled__mypyc.*.so"):
        built.unlink()


def _ext_modules() -> list:
    if not BUILDS & set(sys.argv):  # metadata only (egg_info, dist_info): nothing to compile
        return []
    _remove_earlier_build()
    if os.environ.get("VEJVISER_PURE_PYTHON") == "1":
        return []
    if _compiler() is None:
        print("vejviser: no C compiler found; installing pure Python", file=sys.stderr)
        return []
    from mypyc.build import mypycify

    modules = mypycify(
        ["--ignore-missing-imports", "--follow-imports=silent", *COMPILED],
        opt_level="3",
        group_name="vejviser_compiled",
    )
    digests = {path: hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in COMPILED}
    RECORD.write_text(json.dumps(digests, indent=1) + "\n")
    return modules


setup(ext_modules=_ext_modules())
