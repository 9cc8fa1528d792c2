"""``python -m service``: the vejviser command, for environments without the console script."""

from service.cli import app

app()
