"""Secrets out of everything the admin API shows, and back into what it is sent.

kairos-rs's ``GET /api/config`` returned ``jwt.secret`` in clear (reference §2.5, §10.11). Here
every value the admin API returns goes through ``redact``: a value is replaced by ``"***"`` when

- its key names a secret: the key contains ``secret``, ``password``, ``passwd``, ``token``,
  ``api_key``, ``apikey``, ``private`` or ``credential``, or is ``keys`` (an API-key consumer's
  keys) — lists keep their length (``["***", "***"]``) so an operator can still count keys, objects
  are walked (``api_keys`` keeps each consumer's ``name``);
- it is a URL with credentials (``redis://user:pw@host``): the user-info part becomes ``***``;
- it is the ``value``/``replacement`` of a header or query rule whose ``name`` is sensitive
  (``Authorization``, ``Cookie``, ``X-API-Key``, any name with ``token``/``secret``/``key``...).

Redaction is by key name, not by type, so it covers keys the gateway does not know yet (a new
provider's ``access_token``) and ``${VAR}`` references alike (their default could be a secret).

A client that GETs a route and PUTs it back sends ``"***"`` where a secret was; ``restore``
puts the running value back there, so a round trip never overwrites a secret with stars.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

_SECRET_WORDS = ("secret", "password", "passwd", "token", "api_key", "apikey", "private", "credential")
_SECRET_EXACT = frozenset({"keys"})
# Names that contain a secret word but hold none (a header *name*, a TTL).
_NOT_SECRET = frozenset({"api_key_header", "token_header", "jwks_url", "max_tokens"})
_SENSITIVE_HEADER_WORDS = (
    "authorization",
    "cookie",
    "token",
    "secret",
    "password",
    "api-key",
    "apikey",
    "key",
)
_URL_CREDENTIALS = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)([^/@?#]*)@")


def is_secret_key(key: str) -> bool:
    lowered = key.lower()
    if lowered in _NOT_SECRET:
        return False
    if lowered in _SECRET_EXACT:
        return True
    return any(word in lowered for word in _SECRET_WORDS)


def _sensitive_name(name: Any) -> bool:
    if not isinstance(name, str):
        return False
    lowered = name.lower()
    return any(word in lowered for word in _SENSITIVE_HEADER_WORDS)


def _mask(value: Any) -> Any:
    """The masked form of a secret value: scalars become "***", lists keep their length, objects
    are walked (their non-secret keys stay readable)."""
    if isinstance(value, dict):
        return {key: _mask(item) if is_secret_key(str(key)) else redact(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(item) if not isinstance(item, dict) else redact(item) for item in value]
    if value is None or isinstance(value, bool):
        return value  # `"secret": null` or a flag says nothing
    return MASK


def redact_url(text: str) -> str:
    return _URL_CREDENTIALS.sub(lambda match: f"{match.group(1)}{MASK}@", text)


def redact(value: Any) -> Any:
    """A copy of a JSON-like value with every secret replaced by ``"***"`` (the input is untouched)."""
    if isinstance(value, dict):
        rule = _sensitive_name(value.get("name")) and ("value" in value or "replacement" in value)
        out: dict[Any, Any] = {}
        for key, item in value.items():
            if is_secret_key(str(key)) or (rule and key in ("value", "replacement", "pattern")):
                out[key] = _mask(item)
            else:
                out[key] = redact(item)
        return out
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    if isinstance(value, str) and "@" in value and "://" in value:
        return redact_url(value)
    return value


def restore(sent: Any, running: Any) -> Any:
    """``sent`` with every ``"***"`` (and masked URL credentials) replaced by the running value at
    the same place, when the running value there was redacted to exactly what was sent."""
    if isinstance(sent, str):
        if isinstance(running, str) and sent != running and redact(running) == sent:
            return running  # a URL whose credentials were shown as ***
        return sent
    if isinstance(sent, dict) and isinstance(running, dict):
        rule = _sensitive_name(running.get("name")) and sent.get("name") == running.get("name")
        out: dict[Any, Any] = {}
        for key, item in sent.items():
            if key not in running:
                out[key] = item
            elif (is_secret_key(str(key)) or (rule and key in ("value", "replacement", "pattern"))) and (
                _mask(running[key]) == item or redact(running[key]) == item
            ):
                out[key] = restore_masked(item, running[key])
            else:
                out[key] = restore(item, running[key])
        return out
    if isinstance(sent, list) and isinstance(running, list) and len(sent) == len(running):
        return [restore(item, old) for item, old in zip(sent, running, strict=True)]
    return sent


def restore_masked(sent: Any, running: Any) -> Any:
    """A secret value sent back exactly as it was shown: the running value, element by element."""
    if sent == MASK:
        return running
    if isinstance(sent, list) and isinstance(running, list) and len(sent) == len(running):
        return [restore_masked(item, old) for item, old in zip(sent, running, strict=True)]
    if isinstance(sent, dict) and isinstance(running, dict):
        return restore(sent, running)
    return sent
