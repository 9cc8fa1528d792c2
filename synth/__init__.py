"""Synthetic Danish general-practice FHIR data: reproducible patients for tests and benchmarks."""
