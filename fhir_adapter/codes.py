"""Code systems: one short key per system, and one canonical spelling per code.

Danish data arrive with several URIs for one system (NPU before and after DK Core 3.4.0, SKS with
or without the D-hierarchy OID, HL7 OIDs from older exports) and with codes spelled several ways
("E11.9", "DE119", "npu27300"). Canonicalising here, once, lets value sets and rules compare plain
``(key, code)`` pairs. URIs are from DOMAIN.md §2 and the HL7 terminology naming systems.

ICD-10 means WHO ICD-10 (and Denmark's SKS D-hierarchy, which is WHO ICD-10 with extra Danish
sub-codes). ICD-10-CM (``http://hl7.org/fhir/sid/icd-10-cm``) is deliberately *not* an alias: it
is a US modification whose codes differ below the three-character level, so treating it as ICD-10
would make prefix matches wrong. It passes through under its own URI.
"""

from __future__ import annotations

from functools import lru_cache

from fhir_adapter.records import Coding

SYSTEMS: dict[str, tuple[str, ...]] = {
    "npu": ("http://npu-terminology.org", "urn:oid:1.2.208.176.2.1"),
    "loinc": ("http://loinc.org", "urn:oid:2.16.840.1.113883.6.1"),
    "snomed": ("http://snomed.info/sct", "urn:oid:2.16.840.1.113883.6.96"),
    "icpc2": ("urn:oid:1.2.208.176.2.31", "http://hl7.org/fhir/sid/icpc-2"),
    "icd10": ("http://hl7.org/fhir/sid/icd-10", "urn:oid:2.16.840.1.113883.6.3"),
    "sks": ("urn:oid:1.2.208.176.2.4", "urn:oid:1.2.208.176.2.4.12"),
    "atc": ("http://www.whocc.no/atc", "urn:oid:2.16.840.1.113883.6.73"),
    "rxnorm": ("http://www.nlm.nih.gov/research/umls/rxnorm", "urn:oid:2.16.840.1.113883.6.88"),
    "ucum": ("http://unitsofmeasure.org", "urn:oid:2.16.840.1.113883.6.8"),
}
"""Short key -> known URIs; the first URI is the preferred one (see :func:`system_uri`)."""

HIERARCHICAL: frozenset[str] = frozenset({"icd10", "atc", "icpc2", "sks"})
"""Systems whose codes are prefix hierarchies: a value-set code covers every code it prefixes
(``E11`` covers ``E119``, ``C10AA`` covers ``C10AA05``)."""

_KEY_BY_URI: dict[str, str] = {uri: key for key, uris in SYSTEMS.items() for uri in uris}
_KEY_BY_URI.update({key: key for key in SYSTEMS})


@lru_cache(maxsize=65536)
def canonical_coding(system: str, code: str) -> Coding:
    """Return the ``(system key, code)`` pair under which a coding is stored and matched.

    ``system`` is a URI or a short key. Unknown systems keep their URI as given, so nothing is
    lost; SKS diagnosis codes (``D...``) become ICD-10 so ``DE119`` and ``E11.9`` are one code.
    """
    code = code.strip()
    key = _KEY_BY_URI.get(system)
    if key is None:
        return (system, code)
    if key == "sks":
        code = code.upper().replace(".", "")
        if code.startswith("D") and len(code) > 1:
            return ("icd10", code[1:])
        return ("sks", code)
    if key in ("icd10", "icpc2"):
        return (key, code.upper().replace(".", ""))
    if key in ("atc", "npu"):
        return (key, code.upper())
    return (key, code)


def system_uri(key: str) -> str:
    """Preferred URI for a system key, for emitting FHIR.

    A key that is not a known short key is an unknown system's URI (see
    :func:`canonical_coding`) and is returned unchanged, so every record coding can be emitted.
    """
    uris = SYSTEMS.get(key)
    return uris[0] if uris else key
