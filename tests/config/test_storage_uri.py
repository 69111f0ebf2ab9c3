"""Every ``storage_uri`` field takes every Redis URL form the stores open, rate limits also take the
``limits`` library's storages, and anything else is refused naming the field and the value."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kairos.config import storage_uri
from kairos.config.llm import LlmCacheConfig
from kairos.config.policies import CacheConfig
from kairos.config.ratelimit import RateLimitConfig
from kairos.config.storage_uri import LIMITS_SCHEMES, REDIS_SCHEMES, limits_uri
from tests.config.builders import config, errors, load, route

REDIS_URLS = (
    "redis://127.0.0.1:6379/0",
    "rediss://user:pw@cache.internal:6380/1",
    "unix:///run/redis.sock?db=2",
    "redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2/mymaster/0",
    "rediss+sentinel://s1,s2/mymaster",
    "redis+cluster://10.0.0.1:7000,10.0.0.2:7001",
    "rediss+cluster://node:7000",
    "REDIS://upper.case:6379",
)
LIMIT = {"requests_per_window": 3, "window_duration": 60}


def rate_limit(uri: str, **extra: Any) -> dict[str, Any]:
    return {**LIMIT, "storage_uri": uri, **extra}


@pytest.mark.parametrize("uri", ["memory://", *REDIS_URLS])
def test_every_section_takes_memory_and_every_redis_form(uri: str) -> None:
    loaded = load(config(route(rate_limit=rate_limit(uri), cache={"storage_uri": uri})))
    only = loaded.config.routers[0]
    assert only.rate_limit is not None and only.rate_limit.storage_uri == uri
    assert only.cache is not None and only.cache.storage_uri == uri
    assert LlmCacheConfig.model_validate({"storage_uri": uri}).storage_uri == uri


@pytest.mark.parametrize(
    ("uri", "limits_scheme"),
    [
        ("memcached://127.0.0.1:11211", "async+memcached://127.0.0.1:11211"),
        ("memcached://a:11211,b:11211", "async+memcached://a:11211,b:11211"),
        ("async+memcached://127.0.0.1:11211", "async+memcached://127.0.0.1:11211"),
        ("async+memory://", "async+memory://"),
        ("async+redis://127.0.0.1:6379/3", "async+redis://127.0.0.1:6379/3"),
        ("async+redis+cluster://n1:7000,n2:7000", "async+redis+cluster://n1:7000,n2:7000"),
    ],
)
def test_rate_limits_also_take_the_limits_librarys_storages(uri: str, limits_scheme: str) -> None:
    for window_type in ("FixedWindow", "SlidingWindow"):
        policy = RateLimitConfig.model_validate(rate_limit(uri, window_type=window_type))
        assert policy.storage_uri == uri and policy.uses_redis  # a shared store: never this process's memory
    assert limits_uri(uri) == limits_scheme


@pytest.mark.parametrize(
    "uri", ["http://127.0.0.1:6379", "redis:/127.0.0.1", "127.0.0.1:11211", "", "postgres://db"]
)
def test_an_unknown_storage_is_refused_naming_the_field_and_the_value(uri: str) -> None:
    problems = errors(config(route(rate_limit=rate_limit(uri), cache={"storage_uri": uri})))
    assert len(problems) == 2
    limit_problem, cache_problem = sorted(problems, reverse=True)
    assert limit_problem.startswith(
        f"routers[0].rate_limit.storage_uri: {uri!r} is not a storage Kairos can use"
    )
    assert "redis+sentinel://" in limit_problem and "memcached://" in limit_problem
    assert cache_problem.startswith(f"routers[0].cache.storage_uri: {uri!r} is not a storage Kairos can use")
    assert "redis+cluster://" in cache_problem and "memcached://" not in cache_problem


@pytest.mark.parametrize("uri", ["memcached://127.0.0.1:11211", "async+redis://127.0.0.1:6379"])
def test_the_limits_librarys_storages_are_for_rate_limits_only(uri: str) -> None:
    for model in (CacheConfig, LlmCacheConfig):
        with pytest.raises(ValidationError) as raised:
            model.model_validate({"storage_uri": uri})
        message = str(raised.value)
        assert "storage_uri" in message and f"{uri!r} is not a storage Kairos can use here" in message
        assert "for rate limits only" in message


def test_a_password_in_a_refused_uri_is_not_repeated_in_the_message() -> None:
    with pytest.raises(ValidationError) as raised:
        CacheConfig.model_validate({"storage_uri": "memcached://admin:hunter2@127.0.0.1:11211"})
    message = raised.value.errors()[0]["msg"]
    assert "hunter2" not in message and "'memcached://***@127.0.0.1:11211'" in message


def test_a_token_bucket_cannot_run_on_a_limits_storage() -> None:
    for shape in (
        rate_limit("memcached://127.0.0.1:11211", window_type="TokenBucket"),
        {
            "storage_uri": "async+redis://h",
            "algorithm": "token_bucket",
            "requests_per_second": 2,
            "burst_size": 3,
        },
    ):
        (problem,) = errors(config(route(rate_limit=shape)))
        assert problem.startswith("routers[0].rate_limit: window_type: TokenBucket has no counterpart")
        assert "use FixedWindow or SlidingWindow, or a memory:// or Redis storage_uri" in problem
    # The built-in stores have one.
    assert RateLimitConfig.model_validate(rate_limit("redis://h", window_type="TokenBucket")).window_type == (
        "TokenBucket"
    )
    # Turned off, nothing is enforced, so nothing is refused.
    RateLimitConfig.model_validate(rate_limit("memcached://h:1", window_type="TokenBucket", enabled=False))


def test_a_composites_token_bucket_is_named_by_its_place() -> None:
    parts = [
        {"strategy": "PerIP", **LIMIT, "window_type": "SlidingWindow"},
        {"strategy": "PerRoute", **LIMIT, "window_type": "TokenBucket"},
    ]
    top = {"storage_uri": "memcached://127.0.0.1:11211", "strategy": {"Composite": parts}}
    (problem,) = errors(config(route(), rate_limit=top))
    assert problem.startswith("rate_limit: strategy.Composite[1].window_type: TokenBucket has no counterpart")
    assert "'memcached://127.0.0.1:11211'" in problem


def test_a_window_memcached_cannot_keep_is_refused() -> None:
    uri = "memcached://127.0.0.1:11211"
    month, fortnight = 31 * 86_400, 15 * 86_400
    (problem,) = errors(
        config(route(rate_limit=rate_limit(uri, window_type="FixedWindow", window_duration=month)))
    )
    assert problem.startswith(
        "routers[0].rate_limit: window_duration: 2678400 s is too long for memcached "
        "(storage_uri 'memcached://127.0.0.1:11211'), whose keys cannot be kept more than 30 days"
    )
    (problem,) = errors(config(route(rate_limit=rate_limit(uri, window_duration=fortnight + 1))))  # sliding
    assert "a SlidingWindow keeps 2 window(s), so at most 1296000 s" in problem
    RateLimitConfig.model_validate(rate_limit(uri, window_duration=fortnight))
    RateLimitConfig.model_validate(rate_limit(uri, window_type="FixedWindow", window_duration=30 * 86_400))
    RateLimitConfig.model_validate(rate_limit("async+redis://h", window_duration=month))  # Redis keeps any


def test_a_storage_whose_client_is_missing_is_refused_naming_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # pymongo "installed", motor and memcachio not, whatever this machine has.
    found = {"pymongo": object(), "motor": None, "memcachio": None}
    monkeypatch.setattr(storage_uri, "find_spec", found.get)
    (problem,) = errors(config(route(rate_limit=rate_limit("mongodb://127.0.0.1:27017"))))
    assert problem.startswith(
        "routers[0].rate_limit.storage_uri: 'mongodb://127.0.0.1:27017' needs the Python package motor, "
        "which is not installed (pip install 'limits[async-mongodb]')"
    )
    (problem,) = errors(config(route(rate_limit=rate_limit("memcached://127.0.0.1:11211"))))
    assert "needs the Python package memcachio" in problem and "limits[async-memcached]" in problem


def test_the_scheme_lists_match_the_installed_limits_library() -> None:
    """The config names limits' async schemes without importing limits; this keeps the list true."""
    import limits.aio.storage  # noqa: F401  (registers the async storages)
    from limits.storage import storage_from_string

    registered = {scheme for scheme in _limits_schemes() if scheme.startswith("async+")}
    assert {storage.scheme for storage in LIMITS_SCHEMES.values()} == registered
    # Every bare scheme is limits' own name for it, minus "async+", and none shadows a Kairos store.
    for name, storage in LIMITS_SCHEMES.items():
        assert storage.scheme in (name, "async+" + name)
        assert name not in REDIS_SCHEMES and name != "memory"
    assert storage_from_string("async+memory://").__class__.__name__ == "MemoryStorage"


def _limits_schemes() -> set[str]:
    from limits._storage_scheme import SCHEMES  # private, but the only list limits keeps

    return set(SCHEMES)


def test_the_loader_line_quoting_a_bad_uri_masks_its_credentials() -> None:
    """The loader's "(got ...)" quotes the offending value: for a URL it must not quote its password."""
    found = errors(
        config(route(cache={"ttl_secs": 5, "storage_uri": "ftp://ops:hunter2@cache.local/0?password=pw2"}))
    )
    line = next(line for line in found if "storage_uri" in line)
    assert "hunter2" not in line and "pw2" not in line and "ftp://***@cache.local/0?password=***" in line
