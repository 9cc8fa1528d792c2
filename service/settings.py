"""Service configuration: a YAML file (``--config`` / $VEJVISER_CONFIG) overridden by environment
variables (``VEJVISER_FHIR_BUDGET_SECONDS=2``, nested with ``__``: ``VEJVISER_AUTH__ENABLED``)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from service.auth import AuthSettings

REPOSITORY = Path(__file__).resolve().parents[1]
CONFIG_ENV = "VEJVISER_CONFIG"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VEJVISER_", env_nested_delimiter="__", extra="forbid"
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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config = os.environ.get(CONFIG_ENV)
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        if config:
            if not Path(config).is_file():  # pydantic-settings would read a missing file as empty
                raise ValueError(f"the settings file {config} does not exist")
            sources += (YamlConfigSettingsSource(settings_cls, yaml_file=Path(config)),)
        return sources
