"""Code-system keys and canonical codes: the aliases DOMAIN.md §2 says must be one code."""

import pytest

from fhir_adapter.codes import HIERARCHICAL, SYSTEMS, canonical_coding, system_uri


@pytest.mark.parametrize(
    ("system", "code", "expected"),
    [
        ("http://npu-terminology.org", "NPU27300", ("npu", "NPU27300")),
        ("urn:oid:1.2.208.176.2.1", "npu27300", ("npu", "NPU27300")),  # pre-3.4.0 DK Core URI
        ("http://npu-terminology.org", "dnk35302", ("npu", "DNK35302")),  # Danish local code
        ("http://hl7.org/fhir/sid/icd-10", "E11.9", ("icd10", "E119")),
        ("http://hl7.org/fhir/sid/icd-10", " e11 ", ("icd10", "E11")),
        ("urn:oid:1.2.208.176.2.4", "DE119", ("icd10", "E119")),  # SKS D-hierarchy is ICD-10
        ("urn:oid:1.2.208.176.2.4.12", "DE11.9", ("icd10", "E119")),
        ("urn:oid:1.2.208.176.2.4", "KJFG10", ("sks", "KJFG10")),  # an SKS procedure stays SKS
        ("urn:oid:1.2.208.176.2.31", "t90", ("icpc2", "T90")),
        ("http://hl7.org/fhir/sid/icpc-2", "T90.01", ("icpc2", "T9001")),
        ("http://www.whocc.no/atc", "c10aa05", ("atc", "C10AA05")),
        ("http://loinc.org", " 4548-4", ("loinc", "4548-4")),
        ("urn:oid:2.16.840.1.113883.6.1", "4548-4", ("loinc", "4548-4")),
        ("http://snomed.info/sct", "44054006", ("snomed", "44054006")),
        ("http://www.nlm.nih.gov/research/umls/rxnorm", "860975", ("rxnorm", "860975")),
        ("icd10", "E11.9", ("icd10", "E119")),  # a short key works as the system too
        ("sks", "de119", ("icd10", "E119")),
    ],
)
def test_canonical_coding(system: str, code: str, expected: tuple[str, str]) -> None:
    assert canonical_coding(system, code) == expected


def test_sks_and_icd10_spellings_of_one_diagnosis_are_one_coding() -> None:
    assert canonical_coding("urn:oid:1.2.208.176.2.4", "DE119") == canonical_coding(
        "http://hl7.org/fhir/sid/icd-10", "E11.9"
    )


def test_unknown_system_keeps_its_uri_and_the_code_stripped() -> None:
    assert canonical_coding("http://example.org/local", " Ab.1 ") == (
        "http://example.org/local",
        "Ab.1",
    )


def test_icd10_cm_is_not_treated_as_who_icd10() -> None:
    # ICD-10-CM differs from WHO ICD-10 below three characters, so prefix matches would lie.
    system = "http://hl7.org/fhir/sid/icd-10-cm"
    assert canonical_coding(system, "E11.9") == (system, "E11.9")


def test_system_uri_gives_the_preferred_uri_and_passes_unknown_systems_through() -> None:
    assert system_uri("npu") == "http://npu-terminology.org"
    assert system_uri("icpc2") == "urn:oid:1.2.208.176.2.31"
    assert system_uri("http://example.org/local") == "http://example.org/local"


def test_every_key_has_uris_and_no_uri_belongs_to_two_keys() -> None:
    uris = [uri for key_uris in SYSTEMS.values() for uri in key_uris]
    assert all(SYSTEMS.values())
    assert len(uris) == len(set(uris))
    assert {"npu", "loinc", "snomed", "icpc2", "icd10", "sks", "atc", "rxnorm", "ucum"} <= set(
        SYSTEMS
    )


def test_hierarchical_systems() -> None:
    assert frozenset({"icd10", "atc", "icpc2", "sks"}) == HIERARCHICAL
