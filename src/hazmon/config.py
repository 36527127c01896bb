"""Settings: from the environment (``HAZMON_`` prefix) and an optional YAML file.

Precedence, highest first: environment variables, the YAML file named by ``HAZMON_CONFIG``,
the defaults below. An invalid value stops start-up with a message naming the key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

MIN_RETENTION_DAYS = 30  # Order 40 of 2011: monitoring records are kept at least 30 days.


class ConfigError(Exception):
    """A setting is invalid; the message names every offending key."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HAZMON_", extra="forbid", validate_default=True)

    database_url: str | None = Field(
        default=None, description="PostgreSQL/TimescaleDB URL; unset: an embedded PostgreSQL in data_dir"
    )
    data_dir: Path = Field(default=Path(".hazmon"), description="embedded database, spool, quarantine")
    site: Path | None = Field(default=None, description="site file loaded at start-up")
    rules: list[Path] = Field(default_factory=list, description="alarm rule files")
    gateways: list[Path] = Field(default_factory=list, description="gateway configuration files")
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    retention_days: int = Field(default=90, description="raw readings kept this long")
    rollup_interval_s: float = Field(default=60.0, gt=0, description="how often hazmon maintains rollups")
    db_pool_size: int = Field(default=8, ge=1, le=200)

    @field_validator("retention_days")
    @classmethod
    def _retention_floor(cls, v: int) -> int:
        if v < MIN_RETENTION_DAYS:
            raise ValueError(f"must be >= {MIN_RETENTION_DAYS} days (records must be kept 30 days)")
        return v

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("HAZMON_CONFIG")
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, turning validation errors into one readable ConfigError."""
    config_file = os.environ.get("HAZMON_CONFIG")
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"HAZMON_CONFIG: file not found: {config_file}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"HAZMON_CONFIG: {config_file} is not valid YAML: {e}") from e
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"HAZMON_CONFIG: {config_file} must hold a mapping of settings")
    try:
        return Settings(**overrides)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"])
            lines.append(f"HAZMON_{key.upper()}: {err['msg']}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
