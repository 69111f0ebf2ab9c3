"""The storage URIs a config's ``storage_uri`` fields may name, checked in one place.

Every section with a ``storage_uri`` (rate limits, the response cache, the LLM cache) accepts Kairos's
own stores: ``memory://`` and every Redis URL form ``kairos.redis_outage.connect`` opens (one server,
TLS, a Unix socket, Sentinel, Cluster). Rate limits also accept the storages of the ``limits`` library
(kairos/ratelimit/limits_store.py): ``memcached://``, ``mongodb://``, ``valkey://``... and any of its
own ``async+...`` schemes, ``async+redis://`` included (limits' Redis strategies rather than Kairos's
Lua script). The lists are written out here rather than read from ``limits`` so that loading a config
never imports it (about 0.1 s); a test keeps them in step with the installed ``limits``.

A scheme whose client package is missing (``motor`` for MongoDB) is refused at load, naming the
package, instead of failing on the first request.
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import NamedTuple
from urllib.parse import parse_qsl

# Opened by Kairos's own stores (kairos/redis_outage.py), in every section.
REDIS_SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
)


class LimitsStorage(NamedTuple):
    """How a rate-limit ``storage_uri`` reaches ``limits``: its async scheme, the modules its client
    needs and the pip extra of ``limits`` that installs them."""

    scheme: str
    modules: tuple[str, ...]
    extra: str


_MEMCACHED = ("memcachio",), "async-memcached"
_MONGODB = ("motor", "pymongo"), "async-mongodb"
_VALKEY = ("valkey",), "async-valkey"
_REDIS = ("redis",), ""  # a dependency of Kairos itself (limits' "redispy" implementation)
_NONE: tuple[tuple[str, ...], str] = ((), "")

# limits' async schemes (limits.aio.storage) and what each needs.
_LIMITS_ASYNC: dict[str, tuple[tuple[str, ...], str]] = {
    "async+memory": _NONE,
    "async+memcached": _MEMCACHED,
    "async+mongodb": _MONGODB,
    "async+mongodb+srv": _MONGODB,
    "async+redis": _REDIS,
    "async+rediss": _REDIS,
    "async+redis+unix": _REDIS,
    "async+redis+cluster": _REDIS,
    "async+redis+sentinel": _REDIS,
    "async+valkey": _VALKEY,
    "async+valkeys": _VALKEY,
    "async+valkey+unix": _VALKEY,
    "async+valkey+cluster": _VALKEY,
    "async+valkey+sentinel": _VALKEY,
}
# The schemes a config may write without "async+": those Kairos's own stores do not take already.
_LIMITS_BARE = (
    "memcached",
    "mongodb",
    "mongodb+srv",
    "valkey",
    "valkeys",
    "valkey+unix",
    "valkey+cluster",
    "valkey+sentinel",
)

LIMITS_SCHEMES: dict[str, LimitsStorage] = {
    **{name: LimitsStorage(name, *needs) for name, needs in _LIMITS_ASYNC.items()},
    **{name: LimitsStorage("async+" + name, *_LIMITS_ASYNC["async+" + name]) for name in _LIMITS_BARE},
}


def scheme_of(uri: str) -> str:
    """The URI's scheme in lower case (``""`` when it has none)."""
    scheme, separator, _ = uri.partition("://")
    return scheme.lower() if separator else ""


def limits_storage(uri: str | None) -> LimitsStorage | None:
    """The ``limits`` storage a rate-limit ``storage_uri`` names; None for Kairos's own stores."""
    return None if uri is None else LIMITS_SCHEMES.get(scheme_of(uri))


def limits_uri(uri: str) -> str:
    """``uri`` as ``limits.storage.storage_from_string`` takes it: its async scheme, the rest as is."""
    storage = limits_storage(uri)
    if storage is None:
        raise ValueError(f"{redacted(uri)} is not a storage of the limits library")
    return storage.scheme + uri[uri.index("://") :]


def check_storage_uri(uri: str, *, with_limits: bool) -> str:
    """``uri`` when a store can open it; else a ValueError naming the value and what is accepted.
    ``with_limits``: the field is a rate limit's, which also takes ``limits``' storages."""
    scheme = scheme_of(uri)
    if scheme == "memory" or scheme in REDIS_SCHEMES:
        return uri
    storage = LIMITS_SCHEMES.get(scheme) if with_limits else None
    if storage is None:
        accepted = "memory://, " + ", ".join(f"{name}://" for name in REDIS_SCHEMES)
        if with_limits:
            accepted += (
                " or a storage of the limits library (memcached://, mongodb://, valkey://, async+...://)"
            )
        elif scheme in LIMITS_SCHEMES:
            accepted += " (the limits library's storages are for rate limits only)"
        raise ValueError(f"{redacted(uri)!r} is not a storage Kairos can use here: use {accepted}")
    missing = [name for name in storage.modules if find_spec(name) is None]
    if missing:
        packages = (
            f"package {missing[0]}, which is"
            if len(missing) == 1
            else f"packages {', '.join(missing)}, which are"
        )
        raise ValueError(
            f"{redacted(uri)!r} needs the Python {packages} not installed "
            f"(pip install 'limits[{storage.extra}]')"
        )
    return uri


def redacted(uri: str) -> str:
    """The URI without its secrets (the user and password, any ``...password=`` option), for logs,
    errors and config diagnostics."""
    scheme, separator, rest = uri.partition("://")
    rest, question, query = rest.partition("?")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    if question:
        pairs = parse_qsl(query, keep_blank_values=True)
        masked = ((key, "***" if "password" in key.lower() else value) for key, value in pairs)
        query = "&".join(f"{key}={value}" for key, value in masked)
    return f"{scheme}{separator}{rest}{question}{query}"
