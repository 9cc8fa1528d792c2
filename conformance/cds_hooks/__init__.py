"""CDS Hooks 2.0 conformance suite: checks any CDS Hooks service at a base URL.

Run it with ``vejviser conformance cds-hooks --base-url URL`` (see README.md here), or from
Python with :func:`conformance.cds_hooks.suite.run_suite`.
"""
