"""Test helpers shared by several test folders (not collected as tests)."""
