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
    lines = str(e.value).splitlines()
    assert any(line.strip().startswith("HAZMON_API_PORT:") and "integer" in line for line in lines), lines
    # the retention floor names the key, the value it needs and why (records are kept 30 days)
    assert "  HAZMON_RETENTION_DAYS: Value error, must be >= 30 days (records must be kept 30 days)" in lines, lines


@pytest.mark.parametrize(
    ("variable", "value"),
    [("HAZMON_RULES", "alarm_rules/gas-detectors.yaml"), ("HAZMON_GATEWAYS", "[unclosed"), ("HAZMON_RULES", "{")],
)
def test_a_value_that_cannot_be_parsed_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """Issue 11, item 11: a list setting that is not JSON raised pydantic's SettingsError, a traceback."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert f"{variable}: cannot be parsed" in str(e.value) and "JSON list" in str(e.value)


def test_cli_says_which_variable_cannot_be_parsed() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "hazmon", "serve"],
        capture_output=True,
        text=True,
        env={"HAZMON_RULES": "alarm_rules/gas-detectors.yaml", "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert "HAZMON_RULES: cannot be parsed" in r.stderr and "Traceback" not in r.stderr


def test_cli_stops_on_invalid_setting() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "hazmon", "migrate"],
        capture_output=True,
        text=True,
        env={"HAZMON_LOG_LEVEL": "LOUD", "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 2
    assert "HAZMON_LOG_LEVEL" in r.stderr
