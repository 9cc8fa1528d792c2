"""fhir_adapter"""

from fhir_adapter.compiled import select_build

select_build()  # before a compiled module of this package can be imported
