"""CDS Hooks 2.0: discovery, prefetch, cards and feedback, built from the loaded guideline set."""
