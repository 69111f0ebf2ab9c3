"""Process settings from KAIROS_* (and kairos-rs's RUST_LOG), and their error reporting."""

from __future__ import annotations

from pathlib import Path

import pytest

from kairos.logs import level_name
from kairos.settings import Settings, SettingsError, load_settings


def test_defaults_match_kairos_rs(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAIROS_HOST", "KAIROS_PORT", "KAIROS_CONFIG_PATH", "KAIROS_LOG_LEVEL", "RUST_LOG"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert (settings.host, settings.port, settings.config_path) == ("0.0.0.0", 5900, Path("config.json"))
    assert settings.log_level == "info"


def test_rust_log_is_an_alias_and_kairos_log_level_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUST_LOG", "kairos=debug,actix_web=info")
    monkeypatch.delenv("KAIROS_LOG_LEVEL", raising=False)
    assert level_name(Settings().log_level) == "DEBUG"
    monkeypatch.setenv("KAIROS_LOG_LEVEL", "warning")
    assert level_name(Settings().log_level) == "WARNING"


@pytest.mark.parametrize(
    ("value", "level"), [("trace", "DEBUG"), ("warn", "WARNING"), ("ERROR", "ERROR"), ("nonsense", "INFO")]
)
def test_level_names(value: str, level: str) -> None:
    assert level_name(value) == level


def test_bad_values_are_named_by_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAIROS_PORT", "0")
    monkeypatch.setenv("KAIROS_LOG_FORMAT", "xml")
    with pytest.raises(SettingsError) as error:
        load_settings()
    text = str(error.value)
    assert 'KAIROS_PORT: must be at least 1 (got "0")' in text
    assert """KAIROS_LOG_FORMAT: must be one of 'json' or 'text' (got "xml")""" in text
