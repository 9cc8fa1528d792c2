"""The instruction-count benchmark's own parts: what its child reads, the count it parses from
valgrind, the section it writes (valgrind itself is not run here: minutes, not seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.bench_chunk import BEGIN, END, Count, child, collected, render
from benchmarks.bench_ingest import AS_OF
from synth.population import write_population


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("population")
    write_population(source, 60, 1, 1, 7, AS_OF)
    return source


def test_the_child_reads_the_first_chunk_of_every_file(
    population: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    child(population, read=True)
    report = json.loads(capsys.readouterr().out)
    files = sorted(p.name for p in population.glob("*.ndjson"))
    assert sorted(report["chunks"]) == files
    # each file is smaller than a chunk here, so its first chunk is all of it (blank lines aside)
    for name, lines in report["chunks"].items():
        text = (population / name).read_bytes()
        assert lines == sum(1 for line in text.split(b"\n") if line.strip())
    assert report["build"] in {"compiled", "pure"}


def test_the_start_up_child_reads_nothing(
    population: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    child(population, read=False)
    report = json.loads(capsys.readouterr().out)
    assert set(report["chunks"].values()) == {0}


def test_the_count_is_callgrinds_total() -> None:
    output = "==123== Events    : Ir\n==123== Collected : 5423404378\n==123==\n==123== I refs: 1\n"
    assert collected(output) == 5_423_404_378
    with pytest.raises(RuntimeError, match="no instruction count"):
        collected("valgrind: command not found")


def test_the_section_has_one_row_per_build() -> None:
    chunks = {"Observation.ndjson": 100, "Patient.ndjson": 50}
    counts = [Count("compiled", 150, chunks, 9_000_000), Count("pure", 150, chunks, 13_500_000)]
    section = render(counts, 20_000, 2026, "python -m benchmarks.bench_chunk")
    assert section.startswith(BEGIN) and section.rstrip().endswith(END)
    assert "| compiled | 150 | 9 | 60,000 |" in section
    assert "| pure | 150 | 14 | 90,000 |" in section
    assert "Observation.ndjson 100 lines, Patient.ndjson 50 lines" in section
