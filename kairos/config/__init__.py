"""config.json: models, loading and validation (see loader.py for the entry points).

The models carry every key's description; schema.py turns them into the JSON schema that the admin
API's OpenAPI document and docs/configuration.md (reference.py) are generated from.
"""

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
