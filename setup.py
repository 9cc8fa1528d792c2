"""Compiles the bulk ingest's hot modules with mypyc; everything else is in pyproject.toml.

Why: reading NDJSON is pure Python dict work, some 50,000 resources per CPU-second; mypyc turns the
same source into C and reads 1.2-1.5x as many (docs/decisions/0010). The source stays the one
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
IN_PLACE = {"editable_wheel", "develop"}  # the builds that put the compiled files in the tree


def _compiler() -> str | None:
    command = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shutil.which(command.split()[0])


def _remove_build_in_place() -> None:
    """A pure-Python editable install must not leave the last compiled one in the tree, where
    Python would still prefer it to the source."""
    RECORD.unlink(missing_ok=True)
    for path in map(Path, COMPILED):
        for built in path.parent.glob(f"{path.stem}.*.so"):
            built.unlink()
    for built in Path().glob("vejviser_compiled__mypyc.*.so"):
        built.unlink()


def _ext_modules() -> list:
    """The compiled modules, and for a build in place the record of the sources they are of.

    A wheel's compiled files and sources are copied together and never edited, so it needs no
    record (and the tree's own is left out of it: pyproject.toml); a build in place does, since
    the sources beside it are edited (fhir_adapter.compiled)."""
    argv = set(sys.argv)
    if not BUILDS & argv:  # metadata only (egg_info, dist_info): nothing to compile
        return []
    pure = os.environ.get("VEJVISER_PURE_PYTHON") == "1"
    if not pure and _compiler() is None:
        print("vejviser: no C compiler found; installing pure Python", file=sys.stderr)
        pure = True
    if pure:
        if IN_PLACE & argv:
            _remove_build_in_place()
        return []
    from mypyc.build import mypycify

    modules = mypycify(
        ["--ignore-missing-imports", "--follow-imports=silent", *COMPILED],
        opt_level="3",
        group_name="vejviser_compiled",
    )
    if IN_PLACE & argv:
        digests = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in COMPILED}
        RECORD.write_text(json.dumps(digests, indent=1) + "\n")
    return modules


setup(ext_modules=_ext_modules())
