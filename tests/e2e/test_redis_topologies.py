"""The Redis-backed stores on every topology ``kairos.redis_outage.connect`` takes, with real servers on
127.0.0.1: a Sentinel set (a master, a replica, one sentinel) through ``redis+sentinel://``, with a
failover; a three-master Redis Cluster through ``redis+cluster://``, where every script's keys must
share a slot; two gateways sharing a limit through the cluster. The topologies start once for the
module; every server is stopped by PID."""

from __future__ import annotations

import asyncio
import functools
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from kairos.cache.entry import CachedResponse
from kairos.cache.redis_store import RedisCacheStore
from kairos.config.llm import LlmCacheConfig
from kairos.config.ratelimit import RateLimitConfig
from kairos.config_store import RedisConfigStore
from kairos.llm.cache import LlmCache
from kairos.llm.limits import LimitStoreUnavailable, RedisLimitStore, TokenLimits
from kairos.ratelimit.policy import Limit, Policy, compile_policy
from kairos.ratelimit.redis_store import RedisStore, StoreUnavailable, slot_keys
from kairos.redis_outage import MAX_CONNECTIONS, _SentinelMaster, connect, redacted
from tests.processes import Server, backend, kairos_run, route, stop
from tests.sentinel import SERVICE, SentinelSet, program, redis_process, sentinel_servers, sync_client, until

MONTHLY = TokenLimits(budget_usd_per_month=0.05)  # 5 requests at 0.01 USD (a month: no window rolls over)


def limit(count: int, strategy: str = "PerIP") -> dict[str, Any]:
    return {"strategy": strategy, "requests_per_window": count, "window_duration": 3600,
            "burst_allowance": 0, "window_type": "FixedWindow"}  # fmt: skip


def composite(*parts: dict[str, Any], prefix: str = "kairos_rl") -> Policy:
    config = {**limit(1000), "strategy": {"Composite": list(parts)}, "redis_key_prefix": prefix}
    return compile_policy(RateLimitConfig.model_validate(config))


async def admitted(store: RedisStore, keys: list[str], limits: tuple[Limit, ...], attempts: int) -> int:
    return sum([all(v.allowed for v in await store.acquire(keys, limits)) for _ in range(attempts)])


async def budget_admitted(store: RedisLimitStore, key: str, attempts: int) -> int:
    return sum([(await store.reserve(key, MONTHLY, 1, 0.01)).allowed for _ in range(attempts)])


# -- URL forms (no server) ---------------------------------------------------------------------------


def test_the_url_forms_build_redis_pys_own_clients() -> None:
    async def main() -> None:
        url = (
            "redis+sentinel://:secret@127.0.0.1:5000,[::1],sentinel.local:5002/mymaster/3?sentinel_password=s"
        )
        master = connect(url)
        assert isinstance(master, _SentinelMaster) and master.sentinels is not None
        pool: Any = master.connection_pool
        assert pool.service_name == "mymaster" and pool.is_master
        assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (3, "secret")
        assert pool.connection_kwargs["socket_timeout"] == 0.5
        sentinels = [s.connection_pool.connection_kwargs for s in master.sentinels.sentinels]
        assert [(s["host"], s["port"]) for s in sentinels] == [
            ("127.0.0.1", 5000), ("::1", 26379), ("sentinel.local", 5002)
        ]  # fmt: skip
        assert all(s["password"] == "s" and s["socket_timeout"] == 0.5 for s in sentinels)
        await master.aclose()

        tls: Any = connect(
            "rediss+sentinel://user:pw@h:1/m?ssl_cert_reqs=none", socket_timeout=5, connect_timeout=2
        )
        kwargs: Any = tls.connection_pool.connection_kwargs
        assert (kwargs["username"], kwargs["password"], kwargs["ssl_cert_reqs"]) == ("user", "pw", "none")
        assert kwargs["socket_timeout"] == 5 and kwargs["socket_connect_timeout"] == 2
        assert "SSL" in tls.connection_pool.connection_class.__name__
        await tls.aclose()

        cluster = connect("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2")
        assert isinstance(cluster, RedisCluster)
        assert sorted(cluster.nodes_manager.startup_nodes) == ["10.0.0.1:7000", "10.0.0.2:6379"]
        await cluster.aclose()

        for bad in ("redis+sentinel://h:1", "redis+sentinel://h:x/m", "redis+cluster://h/2"):
            with pytest.raises(ValueError):
                connect(bad)

    asyncio.run(main())
    assert redacted("redis+sentinel://:pw@h:1,h:2/m?sentinel_password=sp&db=1") == (
        "redis+sentinel://***@h:1,h:2/m?sentinel_password=***&db=1"
    )


def test_a_client_keeps_at_most_max_connections_however_many_calls_wait(redis: str) -> None:
    """A burst of 200 calls at once through one client opens at most MAX_CONNECTIONS connections (an
    unbounded pool opened one per call in flight); the calls beyond wait for a free one and all
    succeed. ``?max_connections=`` in the URL overrides the bound."""

    async def burst(url: str) -> int:
        client: Any = connect(url, socket_timeout=5)
        watcher: Any = connect(redis)
        try:
            baseline = int((await watcher.info("clients"))["connected_clients"])
            answers = await asyncio.gather(*(client.eval("return redis.call('PING')", 0) for _ in range(200)))
            assert len(answers) == 200
            opened = int((await watcher.info("clients"))["connected_clients"]) - baseline
            return opened
        finally:
            await client.aclose()
            await watcher.aclose()

    assert 1 <= asyncio.run(burst(redis)) <= MAX_CONNECTIONS
    assert 1 <= asyncio.run(burst(f"{redis}?max_connections=4")) <= 4


# -- Sentinel ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentinel_set(module_tmp: Path) -> Iterator[SentinelSet]:
    with sentinel_servers(module_tmp) as servers:
        yield servers


def test_sentinel_stores_admit_exactly_n_and_work_again_after_a_failover(sentinel_set: SentinelSet) -> None:
    rule = compile_policy(RateLimitConfig.model_validate(limit(5))).limits

    async def main() -> float:
        limiter, budgets = RedisStore(sentinel_set.url), RedisLimitStore(sentinel_set.url, fail_open=False)
        try:
            assert await admitted(limiter, ["before"], rule, 8) == 5
            assert await budget_admitted(budgets, "alice|gpt", 8) == 5
            with sync_client(sentinel_set.master.port) as master:
                assert master.wait(1, 2000) == 1  # both counters are on the replica too
            stop(sentinel_set.master.process)  # by PID
            start = time.monotonic()
            while True:  # bounded: the sentinel promotes the replica, the client finds it
                assert time.monotonic() - start < 15, "no new master within 15s"
                try:
                    await limiter.acquire(["probe"], rule)
                    await budgets.reserve("probe", TokenLimits(), 1, 0.0)
                    break
                except (StoreUnavailable, LimitStoreUnavailable):
                    await asyncio.sleep(0.2)
            took = time.monotonic() - start
            assert await admitted(limiter, ["before"], rule, 2) == 0  # what was counted survived
            assert await admitted(limiter, ["after"], rule, 8) == 5
            assert await budget_admitted(budgets, "alice|gpt", 2) == 0
            assert await budget_admitted(budgets, "bob|gpt", 8) == 5
            return took
        finally:
            await limiter.close()
            await budgets.close()

    took = asyncio.run(main())
    with sync_client(sentinel_set.sentinel.port) as sentinel:
        assert int(sentinel.sentinel_get_master_addr_by_name(SERVICE)[1]) == sentinel_set.replica.port
    assert took < 10


# -- Redis Cluster -----------------------------------------------------------------------------------


def cluster_ok(port: int) -> bool:
    with sync_client(port) as client:
        return bool(client.execute_command("CLUSTER INFO")["cluster_state"] == "ok")


@pytest.fixture(scope="module")
def cluster(module_tmp: Path) -> Iterator[str]:
    """Three masters, no replicas; the URL names two of them (the client discovers the third)."""
    with ExitStack() as stack:
        options = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
        nodes = [stack.enter_context(redis_process(module_tmp, "cluster", *options)) for _ in range(3)]
        addresses = [f"127.0.0.1:{node.port}" for node in nodes]
        create = [program("redis-cli"), "--cluster", "create", *addresses]
        subprocess.run([*create, "--cluster-replicas", "0", "--cluster-yes"], check=True, timeout=30,
                       capture_output=True)  # fmt: skip
        for node in nodes:
            until(functools.partial(cluster_ok, node.port), f"the cluster is ok on {node.port}")
        yield "redis+cluster://" + ",".join(addresses[:2])


def test_cluster_rate_limits_a_composite_whose_keys_were_on_several_slots(cluster: str) -> None:
    per_route = composite(limit(3, "PerIP"), limit(5, "PerRoute"))
    keys = {
        ip: per_route.keys("global", ip, None, "http GET /x") for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3")
    }
    assert len({key_slot(key.encode()) for key in keys["10.0.0.1"]}) == 2  # what the script got before
    assert all(
        len({key_slot(key.encode()) for key in slot_keys(k, per_route.limits)}) == 1 for k in keys.values()
    )
    # The same limit kind everywhere: the tag carries the client, so clients spread over the slots.
    per_client = composite(limit(2, "PerIP"), limit(5, "PerIPAndRoute"), prefix="by-client")
    slots = set()
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"):
        tagged = slot_keys(per_client.keys("global", ip, None, "http GET /x"), per_client.limits)
        assert len({key_slot(key.encode()) for key in tagged}) == 1
        slots.add(key_slot(tagged[0].encode()))
    assert len(slots) == 4

    async def main() -> None:
        store = RedisStore(cluster)
        try:
            with pytest.raises(RedisClusterException, match="same key slot"):  # untagged, as before
                await store._script(keys=keys["10.0.0.1"], args=["F", 3, 3_600_000, 0.001] * 2)
            # 3 for the first client (its PerIP limit), 2 for the next (the route's 5), none for a third.
            counts = [await admitted(store, keys[ip], per_route.limits, 4) for ip in sorted(keys)]
            assert counts == [3, 2, 0]
            ips = ("10.0.0.1", "10.0.0.2")
            clients = [per_client.keys("global", ip, None, "http GET /x") for ip in ips]
            assert [await admitted(store, k, per_client.limits, 4) for k in clients] == [2, 2]
            assert store.failures == 0
        finally:
            await store.close()

    asyncio.run(main())


def test_cluster_response_cache_store_gets_sets_and_purges_across_nodes(cluster: str) -> None:
    async def main() -> None:
        store = RedisCacheStore(cluster)
        try:
            now = time.time()
            keys = [f"GET /r\nitem-{n}" for n in range(30)]
            assert len({key_slot((store.prefix + key).encode()) * 3 // 16384 for key in keys}) == 3
            for n, key in enumerate(keys):
                await store.set(key, CachedResponse(200, [], b"body %d" % n, b'"e"', now, now + 60))
            found = [await store.get(key) for key in keys]
            assert [entry.body for entry in found if isinstance(entry, CachedResponse)] == [
                b"body %d" % n for n in range(30)
            ]
            assert await store.purge("item-1", any_route=True) == 11  # item-1, item-10 ... item-19
            assert await store.purge("GET /r") == 19  # SCAN on every node, UNLINK per slot
            assert await store.get(keys[0]) is None and store.failures == 0
        finally:
            await store.close()

    asyncio.run(main())


def test_cluster_llm_limits_and_llm_cache(cluster: str) -> None:
    async def main() -> None:
        budgets = RedisLimitStore(cluster, fail_open=False)
        config = LlmCacheConfig.model_validate(
            {
                "mode": "semantic",
                "storage_uri": None,
                "semantic": {"embedding_model": "emb", "threshold": 0.9},
            }
        )
        cache = LlmCache(config, cluster)  # the URL as KAIROS_REDIS_URL gives it
        try:
            verdicts = [await budgets.reserve("carol|gpt", MONTHLY, 1, 0.01) for _ in range(6)]
            assert [v.allowed for v in verdicts] == [True] * 5 + [False]
            reservation = verdicts[0].reservation
            assert reservation is not None
            await budgets.reconcile(reservation, 1, 0.0)  # the call failed: its estimate is given back
            assert await budget_admitted(budgets, "carol|gpt", 2) == 1
            assert budgets.failures == 0

            answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"}}]}
            await cache.put("exact", answer)
            found = await cache.get("exact")
            assert found is not None and found.answer == answer
            for n in range(12):  # answers on many slots, their list on one
                await cache.put_similar("scope", [1.0, n / 100], {**answer, "n": n})
            similar = await cache.get_similar("scope", [1.0, 0.0], 0.9)
            assert similar is not None and similar[0].answer["n"] == 0  # the most similar of 8 fetched
            assert (cache.stats.errors, cache.stats.semantic_hits) == (0, 1)
        finally:
            await budgets.close()
            await cache.close()

    asyncio.run(main())


def test_cluster_config_store_publishes_loads_and_refuses_a_stale_change(cluster: str) -> None:
    async def main() -> None:
        one, two = RedisConfigStore(cluster), RedisConfigStore(cluster)
        seen = [0]

        async def changed(generation: int) -> None:
            seen.append(generation)

        try:
            assert await one.load() is None
            two.watch(lambda: seen[-1], changed)
            assert await one.publish(0, '{"version": 1}') == 1
            assert await two.publish(0, '{"version": 1, "other": true}') is None  # compare-and-set
            assert await two.load() == (1, '{"version": 1}')
            start = time.monotonic()
            while seen[-1] != 1:
                assert time.monotonic() - start < 5, "the watcher did not see generation 1"
                await asyncio.sleep(0.05)
            assert await two.publish(1, '{"version": 1, "n": 2}') == 2 and await one.generation() == 2
        finally:
            await one.close()
            await two.close()

    asyncio.run(main())


# -- two gateways, one cluster -------------------------------------------------------------------------


def fire(urls: list[str], count: int) -> list[int]:
    """``count`` concurrent requests spread over the gateways (tests/e2e/test_rate_limit.py's way)."""

    async def one(client: httpx.AsyncClient, url: str) -> int:
        return (await client.get(url)).status_code

    async def main() -> list[int]:
        async with httpx.AsyncClient(timeout=10) as client:
            return await asyncio.gather(*(one(client, urls[n % len(urls)]) for n in range(count)))

    return asyncio.run(main())


def test_two_gateways_share_a_composite_limit_through_the_cluster(
    module_tmp: Path, upstream: Server, cluster: str
) -> None:
    policy = {**limit(1000), "redis_key_prefix": "two-gateways",
              "strategy": {"Composite": [limit(1000, "PerIP"), limit(10, "PerRoute")]}}  # fmt: skip
    config = {
        "version": 1,
        "routers": [route("/shared", "/echo/shared", [backend(upstream)], rate_limit=policy)],
    }
    env = {"KAIROS_REDIS_URL": cluster, "KAIROS_DRAIN_DELAY": "0"}  # stopped at once, not after a drain
    with kairos_run(module_tmp, config, env=env) as one, kairos_run(module_tmp, config, env=env) as two:
        codes = fire([f"{one.url}/shared", f"{two.url}/shared"], 40)
        assert codes.count(200) == 10 and codes.count(429) == 30
        refused = httpx.get(f"{two.url}/shared")
        assert refused.status_code == 429 and refused.headers["x-ratelimit-remaining"] == "0"
        assert "unreachable" not in one.output() + two.output()
