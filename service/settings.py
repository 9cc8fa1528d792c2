"""Service configuration: a YAML file (``--config`` / $VEJVISER_CONFIG) overridden by environment
variables (``VEJVISER_FHIR_BUDGET_SECONDS=2``, nested with ``__``: ``VEJVISER_AUTH__ENABLED``)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml
from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from fhir_adapter.compiled import PURE_PYTHON
from service.auth import AuthSettings

REPOSITORY = Path(__file__).resolve().parents[1]
CONFIG_ENV = "VEJVISER_CONFIG"
ENV_PREFIX = "VEJVISER_"
#: Variables with the prefix that are not settings: other commands' and the test suite's.
OTHER_VARIABLES = frozenset(
    {
        CONFIG_ENV,
        "VEJVISER_TOKEN",
        "VEJVISER_PRIVATE_KEY_PASSWORD",
        "VEJVISER_REQUIRE_SHARED_DATA",
        PURE_PYTHON,
    }
)


def unknown_variables(environ: Mapping[str, str], fields: Iterable[str]) -> list[str]:
    """``VEJVISER_*`` names that set nothing. Why: pydantic-settings silently skips an unknown
    top-level variable, so a typo (``VEJVISER_FHIR_BUDGET_SECOND``) left the default in force
    while a nested one (``VEJVISER_AUTH__LEEWAY``) stopped the service."""
    known = {name.lower() for name in fields}
    return sorted(
        name
        for name in environ
        if name.upper().startswith(ENV_PREFIX)
        and name.upper() not in OTHER_VARIABLES
        and name[len(ENV_PREFIX) :].split("__")[0].lower() not in known
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid"
    )

    guidelines: Path = Field(default=REPOSITORY / "guidelines", description="Guideline directory.")
    guidelines_git: str | None = Field(
        default=None,
        description="Git repository URL (or path) to serve guidelines from instead of a directory.",
    )
    guidelines_branch: str = Field(default="main", description="Branch of guidelines_git.")
    guidelines_git_path: str = Field(
        default="",
        description="Folder inside the repository holding the guidelines (default: root).",
    )
    guidelines_poll_seconds: float = Field(
        default=5.0, ge=0, description="How often the guideline source is checked; 0: never."
    )
    state_directory: Path = Field(
        default=Path("vejviser-state"), description="Where the service keeps its git cache."
    )
    auth: AuthSettings = Field(default_factory=AuthSettings)
    fhir_budget_seconds: float = Field(
        default=3.0, gt=0, le=60, description="Total time for fetching missing prefetch data."
    )
    fhir_max_connections: int = Field(default=20, ge=1, le=1000)
    max_prefetch_url_length: int = Field(default=2000, ge=200)
    max_request_bytes: int = Field(
        default=50_000_000,
        ge=1_000,
        description="Largest request body read; a larger one is refused (413) unread.",
    )
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed by CORS.")
    feedback_database: Path = Field(default=Path("vejviser-feedback.sqlite"))
    feedback_window_days: float = Field(
        default=30,
        gt=0,
        le=36_500,
        description="Days after issue a card can receive feedback; then, unless feedback names "
        "it, its row is deleted from feedback_database (at start-up and hourly), as is feedback "
        "received this long ago on a card the service never issued. Feedback on issued cards "
        "and patient exceptions are kept.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        unknown = unknown_variables(os.environ, settings_cls.model_fields)
        if unknown:
            raise ValueError(f"unknown environment variable(s): {', '.join(unknown)}")
        config = os.environ.get(CONFIG_ENV)
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        if config:
            check_settings_file(Path(config))
            sources += (YamlConfigSettingsSource(settings_cls, yaml_file=Path(config)),)
        return sources


def check_settings_file(path: Path) -> None:
    """What pydantic-settings would misread or report without naming the file: a missing file
    (read as empty), one saved in another encoding than UTF-8 (a Windows editor's 'æ' in a
    comment), a YAML list or text where settings (``key: value``) belong."""
    if not path.is_file():
        raise ValueError(f"the settings file {path} does not exist")
    try:
        with path.open(encoding="utf-8") as stream:  # a YAML error names the file
            document = yaml.safe_load(stream)
    except UnicodeDecodeError as error:
        raise ValueError(
            f"the settings file {path} is not UTF-8 text (byte {error.start}); save it as UTF-8"
        ) from None
    if document is not None and not isinstance(document, dict):
        raise ValueError(
            f"the settings file {path} holds a {type(document).__name__}, not settings "
            "(key: value lines)"
        )
