"""Settings: from the environment (``HAZMON_`` prefix) and an optional YAML file.

Precedence, highest first: environment variables, the YAML file named by ``HAZMON_CONFIG``,
the defaults below. An invalid value stops start-up with a message naming the key.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)

MIN_RETENTION_DAYS = 30  # Order 40 of 2011: monitoring records are kept at least 30 days.


class ConfigError(Exception):
    """A setting is invalid; the message names every offending key."""


_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


class UplinkSettings(BaseModel):
    """The uplink to the provincial risk-monitoring platform (docs/uplink.md); off while ``endpoint`` is unset.

    Environment: ``HAZMON_UPLINK__ENDPOINT``, ``HAZMON_UPLINK__APP_ID``, … (or ``uplink:`` in the YAML file).
    """

    model_config = ConfigDict(extra="forbid")

    endpoint: str | None = Field(default=None, description="the platform's URL that takes the POSTs (https://)")
    app_id: str | None = Field(default=None, description="application id issued by the authority")
    app_secret: SecretStr | None = Field(default=None, description="application secret issued by the authority")
    sm4_key: SecretStr | None = Field(default=None, description="SM4 key issued by the authority, 32 hex digits")
    sm4_iv: SecretStr | None = Field(default=None, description="SM4-CBC IV issued by the authority, 32 hex digits")
    interval_s: float = Field(default=10.0, gt=0, description="how often real-time values are sent")
    tags: list[str] | None = Field(
        default=None, description="tags sent; unset: every tag of a major hazard installation"
    )
    heartbeat_s: float = Field(default=60.0, gt=0, description="heartbeat period")
    backlog_alarm_s: float = Field(default=300.0, gt=0, description="alarm hazmon.uplink when the backlog is older")
    queue_max_mb: float = Field(default=256.0, gt=0, description="disk queue bound; beyond it the oldest go")
    timeout_s: float = Field(default=10.0, gt=0, description="HTTP timeout of one POST")
    ca_file: Path | None = Field(
        default=None, description="CA certificate(s) that sign the platform's TLS certificate; unset: the system's"
    )

    @model_validator(mode="after")
    def _complete(self) -> UplinkSettings:
        if self.endpoint is None:
            return self
        url = self.endpoint.strip()
        loopback = any(url.startswith(f"http://{h}:") or url.startswith(f"http://{h}/") for h in _LOOPBACK_HOSTS)
        if not url.startswith("https://") and not loopback:
            raise ValueError(f"endpoint {url!r}: use https:// (plain http only to a loopback receiver)")
        missing = [n for n in ("app_id", "app_secret", "sm4_key", "sm4_iv") if not _given(getattr(self, n))]
        if missing:
            raise ValueError(f"the endpoint is set: set {', '.join(missing)} too (issued by the authority)")
        if self.ca_file is not None and not self.ca_file.is_file():
            raise ValueError(f"ca_file: file not found: {self.ca_file}")
        for name in ("sm4_key", "sm4_iv"):
            value = getattr(self, name).get_secret_value().strip()
            if len(value) != 32 or any(c not in "0123456789abcdefABCDEF" for c in value):
                raise ValueError(f"{name}: must be 32 hexadecimal digits (128 bits)")
        return self


class HubSettings(BaseModel):
    """`hazmon serve --role hub`: the regulator hub's uplink receiver feeding the bus (docs/scaling.md, docs/uplink.md).

    Environment: ``HAZMON_HUB__PORT``, ``HAZMON_HUB__CREDENTIALS``, … (or ``hub:`` in the YAML file).
    """

    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="127.0.0.1", description="address the receiver listens on")
    port: int = Field(default=8600, ge=1, le=65535, description="port of POST /api/v1/uplink")
    credentials: Path | None = Field(
        default=None, description="YAML file: per enterprise app id, app_secret, sm4_key, sm4_iv (and its USCCs)"
    )
    out: Path | None = Field(default=None, description="received messages (JSON lines); unset: DATA_DIR/hub/")
    tls_cert: Path | None = Field(default=None, description="serve HTTPS with this certificate (PEM)")
    tls_key: Path | None = Field(default=None, description="the certificate's private key (PEM)")

    @model_validator(mode="after")
    def _pair(self) -> HubSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give tls_cert and tls_key together")
        return self


def _given(v: str | SecretStr | None) -> bool:
    if isinstance(v, SecretStr):
        v = v.get_secret_value()
    return bool(v and v.strip())


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HAZMON_", extra="forbid", validate_default=True, env_nested_delimiter="__"
    )

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
    uplink: UplinkSettings = Field(default_factory=UplinkSettings, description="provincial platform uplink")
    hub: HubSettings = Field(default_factory=HubSettings, description="regulator hub (serve --role hub)")
    # scale-out over NATS JetStream (`hazmon serve --role gateway|engine|writer`, docs/scaling.md)
    sites: list[Path] = Field(default_factory=list, description="more site files (engine shards of many sites)")
    nats_url: str = Field(default="nats://127.0.0.1:4222", description="NATS server with JetStream")
    nats_namespace: str = Field(
        default="hazmon", pattern=r"^[a-z][a-z0-9_]{0,30}$", description="prefix of hazmon's subjects and streams"
    )
    partitions: int = Field(default=16, ge=1, le=1024, description="reading partitions (sites hashed onto them)")
    shard: str = Field(default="0/1", pattern=r"^\d+/\d+$", description="engine shard i/n: owns partitions p % n == i")
    engine_clock: bool = Field(default=True, description="the engine's 1 s tick; off only to replay recorded data")

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
    except SettingsError as e:
        # A value a source cannot parse at all, e.g. HAZMON_RULES that is not JSON.
        m = re.search(r'field "([^"]+)" from source "(\w+)"', str(e))
        field, source = (m.group(1), m.group(2)) if m else ("?", "")
        where = f"HAZMON_{field.upper()}" if source != "YamlConfigSettingsSource" else f"{field} in HAZMON_CONFIG"
        why = f": {e.__cause__}" if e.__cause__ is not None else ""
        example = ' (a JSON list, e.g. ["a.yaml", "b.yaml"])' if field in ("rules", "gateways") else ""
        raise ConfigError(f"invalid configuration:\n  {where}: cannot be parsed{why}{example}") from None
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"])
            lines.append(f"HAZMON_{key.upper()}: {err['msg']}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
