"""FHIR Bundles on disk (Synthea, one file per patient) as NDJSON: what ``vejviser ingest`` reads.

Bulk ingest reads NDJSON, one resource a line, where a reference is ``Type/id``. A Bundle's
entries refer to each other by ``fullUrl`` (``urn:uuid:...`` in Synthea and in transaction
Bundles), which means something only inside that Bundle. So each file is read with
:func:`fhir_adapter.normalise.read_resources` (Bundles of any type, nested ones too, ``.json`` or
``.json.gz``), and every reference that names a fullUrl of the same Bundle is rewritten to the
``Type/id`` that :func:`~fhir_adapter.normalise.normalise` would resolve it to. References to
resources the Bundle lacks (a trimmed Synthea file's encounters) stay as written, and so does a
malformed entry, for ingest to quarantine or report like any other line.

Kept apart from :mod:`engine.population.ingest`: the output is ordinary NDJSON, one file per
resource type like a bulk export, whatever the ingest does with it.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from fhir_adapter.bulk import STATE_FILE
from fhir_adapter.normalise import FhirInputError, read_resources

SUFFIXES = (".json", ".json.gz")
GZIP_MAGIC = b"\x1f\x8b"
GZIP_ERRORS = (OSError, EOFError, zlib.error)  # what decompressing a damaged gzip file raises


def unreadable_gzip(exc: BaseException) -> str:
    """What is wrong with a gzip file that cannot be decompressed to the end."""
    return f"not a readable gzip file ({exc})"


_TYPE = re.compile(r"[A-Z][A-Za-z]{0,63}")
UNKNOWN_TYPE = "unknown"  # the file for entries that are not a resource with a resourceType


@dataclass(frozen=True, slots=True)
class BundleConversion:
    files: int  # Bundle files read
    resources: Counter[str]  # lines written, by output file stem (resource type)

    def report(self) -> str:
        return f"{self.files} Bundle file(s), {self.resources.total()} resource(s)"


def bundle_files(source: Path) -> list[Path]:
    """The Bundle files of a directory (``*.json``, ``*.json.gz``), or the file itself."""
    if not source.is_dir():
        return [source]
    return sorted(p for p in source.iterdir() if p.is_file() and p.name.endswith(SUFFIXES))


def is_bundle_source(source: Path) -> bool:
    """True for a ``.json``/``.json.gz`` file, or a directory of them that holds no NDJSON
    file and is not a bulk export's (whose ``export.json`` is no Bundle, even when empty)."""
    if source.is_dir():
        if any(source.glob("*.ndjson")) or (source / STATE_FILE).exists():
            return False
        return bool(bundle_files(source))
    return source.name.endswith(SUFFIXES)


def file_bytes(path: Path) -> bytes:
    """A FHIR file's bytes, decompressed when it is gzip: told by its first two bytes, not its
    name, so that a renamed ``.json.gz`` (Synthea's) is not read as garbage. Raises
    :class:`FhirInputError` for a gzip file that cannot be decompressed, OSError as reading does.
    """
    data = path.read_bytes()
    if not data.startswith(GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except GZIP_ERRORS as exc:
        raise FhirInputError(unreadable_gzip(exc)) from None


def bundle_resources(path: Path) -> Iterator[Any]:
    """The resources of one Bundle file, references to its own fullUrls rewritten to Type/id.

    Raises :class:`FhirInputError` (naming the file) when the file is not JSON at all.
    """
    try:
        resources = read_resources(file_bytes(path))
    except FhirInputError as exc:
        raise FhirInputError(f"{path.name}: {exc}") from None
    for resource in resources:
        yield _resolved(resource, resources.full_urls)


def write_ndjson(source: Path, directory: Path) -> BundleConversion:
    """Write the resources of every Bundle file in ``source`` to ``directory/<Type>.ndjson``.

    ``*.ndjson`` files already in ``directory`` are replaced, so a re-run leaves no stale lines.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.ndjson"):
        old.unlink()
    files = bundle_files(source)
    counts: Counter[str] = Counter()
    handles: dict[str, Any] = {}
    try:
        for path in files:
            for resource in bundle_resources(path):
                rtype = resource.get("resourceType") if isinstance(resource, dict) else None
                stem = rtype if isinstance(rtype, str) and _TYPE.fullmatch(rtype) else UNKNOWN_TYPE
                if stem not in handles:
                    handles[stem] = (directory / f"{stem}.ndjson").open("wb")
                handles[stem].write(orjson.dumps(resource) + b"\n")
                counts[stem] += 1
    finally:
        for handle in handles.values():
            handle.close()
    return BundleConversion(len(files), counts)


def _resolved(node: Any, full_urls: Mapping[str, str]) -> Any:
    if isinstance(node, list):
        return [_resolved(item, full_urls) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _resolved(value, full_urls) for key, value in node.items()}
    reference = node.get("reference")
    if isinstance(reference, str) and reference in full_urls:
        out["reference"] = full_urls[reference]
    return out
