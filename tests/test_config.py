"""Settings: environment, YAML file, and start-up errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hazmon.config import ConfigError, load_settings


def test_environment_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "hazmon.yaml"
    cfg.write_text("api_port: 9001\nlog_format: json\nretention_days: 60\n")
    monkeypatch.setenv("HAZMON_CONFIG", str(cfg))
    monkeypatch.setenv("HAZMON_API_PORT", "9002")
    s = load_settings()
    assert s.api_port == 9002 and s.log_format == "json" and s.retention_days == 60


def test_invalid_values_name_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAZMON_API_PORT", "eighty")
    monkeypatch.setenv("HAZMON_RETENTION_DAYS", "7")
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert "HAZMON_API_PORT" in str(e.value)
    assert "HAZMON_RETENTION_DAYS: Value error, must be >= 30 days" in str(e.value) or "HAZMON_RETENTION_DAYS" in str(
        e.value
    )


def test_cli_stops_on_invalid_setting() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "hazmon", "migrate"],
        capture_output=True,
        text=True,
        env={"HAZMON_LOG_LEVEL": "LOUD", "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 2
    assert "HAZMON_LOG_LEVEL" in r.stderr
