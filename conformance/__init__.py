"""Suites that check Vejviser against standards and against itself."""
