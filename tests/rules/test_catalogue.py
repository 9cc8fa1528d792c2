"""The catalogue lets a reviewer check a rule without opening the file."""

from __future__ import annotations

from rules.catalogue import render_catalogue
from rules.guideline_set import GuidelineSet


def test_every_fact_is_defined_in_both_languages(guideline_set: GuidelineSet) -> None:
    """Conditions name facts (`frail`, `hba1c.value > ...`); the windows, value sets and
    thresholds behind them were in no catalogue, so a reviewer could not check them there."""
    text = render_catalogue(guideline_set)
    for line in (
        "- **Fakta**:",
        "  - `hba1c`: seneste HbA1c (`hba1c`), inden for `12 months`",
        "  - `t2d`: diagnose Type 2-diabetes (`t2d`)",
        "  - `frail`: `age >= 85`",
        "- **Facts**:",
        "  - `long_benzo`: continuous use of Benzodiazepines (`benzodiazepines`), for more than "
        "`28 days`, gaps of at most (days) `7`",
        "  - `new_metformin`: started Metformin (`metformin`), within `90 days`",
        "  - `own_goal`: the patient's own target for HbA1c (`hba1c`)",
    ):
        assert f"\n{line}\n" in text, line
