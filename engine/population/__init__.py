"""The population engine: the same compiled guidelines as set-based SQL over a facts store."""

from fhir_adapter.compiled import select_build

select_build()  # before a compiled module of this package can be imported
