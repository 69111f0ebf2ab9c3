"""config.json: models, loading and validation (see loader.py for the entry points)."""

from kairos.config.loader import LoadedConfig, default_config_text, load_data, load_file, load_text
from kairos.config.model import BackendConfig, GatewayConfig, RouteConfig
from kairos.config.problems import ConfigError, Problem

__all__ = [
    "BackendConfig",
    "ConfigError",
    "GatewayConfig",
    "LoadedConfig",
    "Problem",
    "RouteConfig",
    "default_config_text",
    "load_data",
    "load_file",
    "load_text",
]
