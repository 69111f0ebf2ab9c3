"""What the Redis-backed stores (rate limits, response cache, LLM limits and cache, the config store)
share: the client, built from one URL, and how an outage is handled.

``connect`` takes every URL form the stores accept (``KAIROS_REDIS_URL``, ``KAIROS_CONFIG_STORE``):

- ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS), ``unix:///path?db=N``: one
  server, redis-py's own URL parsing (``Redis.from_url``);
- ``redis+sentinel://[[user]:password@]host[:port][,host2[:port2]...]/service_name[/db]``, and
  ``rediss+sentinel://`` (TLS to the sentinels and to the data nodes): the master of
  ``service_name`` as the sentinels name it (``redis.asyncio.sentinel.Sentinel.master_for``), found
  again after a failover. Sentinels default to port 26379. The form of the ``Redis-Sentinel-Url``
  package and of Prefect/docket (there is no standard one); the user and password are the data
  nodes', ``?sentinel_username=...&sentinel_password=...`` authenticate to the sentinels;
- ``redis+cluster://[[user]:password@]host[:port][,host2[:port2]...]`` and ``rediss+cluster://``: a
  Redis Cluster (``redis.asyncio.cluster.RedisCluster``), the nodes listed being where it starts to
  discover the others (one is enough). No database number (a cluster only has database 0).

The other query options (``?ssl_cert_reqs=none``, ``?health_check_interval=30``, ...) are redis-py's
own URL options, applied to the data-node connections; they override ``connect``'s timeouts.

Each client keeps at most ``MAX_CONNECTIONS`` connections (per node for a cluster; override with
``?max_connections=N``). redis-py's pools are unbounded by default and open one connection per call
in flight, so a burst multiplied by every store of every replica could reach Redis's own limit
(10,000 clients) at about 100 replicas (measured: 32 calls at once made 32 more connections). A
standalone server gets redis-py's ``BlockingConnectionPool``: a call beyond the bound waits for a
free connection up to the socket timeout, then counts as an outage like any Redis error.

A standalone server's pool also turns redis-py's maintenance notifications off (redis-py 8.1's
asyncio pools default them to ``"auto"``: on for RESP3 over TCP). They are a Redis Enterprise / Redis
Cloud feature the stores do not use, and while they are on, redis-py 8.1's pool hands out a pooled
connection the server has closed without checking it (redis/redis-py#4252, fixed upstream by #4260).
After a restart of redis-server every connection idle in a store's pool then failed its next call
("Connection closed by server"), whenever a burst first reached it, each failure another outage
second for the store (measured: tests/e2e/test_redis_failover.py). Off, the pool checks a connection
when it hands it out and reconnects a closed one, as redis-py 8.0 did. A Sentinel pool has no
notifications (its connections have no fixed host); a cluster's client, which keeps its connections
itself, is left as redis-py builds it.

While Redis is unreachable a store says so at once for ``RETRY_SECONDS`` instead of making every
request wait on a dead socket; the outage is logged once when it starts and once when it ends, and
each operation it cost is counted for ``/metrics``.
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, unquote, urlencode

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool, ConnectionPool, parse_url
from redis.asyncio.sentinel import Sentinel
from redis.typing import EncodableT

from kairos.config.storage_uri import redacted as redacted  # re-exported: the stores log with it

logger = logging.getLogger("kairos")

RETRY_SECONDS = 1.0
SOCKET_TIMEOUT = 0.5
MAX_CONNECTIONS = 64  # per client (per node for a cluster): see the module docstring
SENTINEL_PORT = 26379
CLUSTER_PORT = 6379

# What ``connect`` returns. Both have what the stores call (get/set/hmget, register_script, pipeline,
# scan_iter, unlink, pubsub, aclose, ...); a store that needs a cluster's variant of a multi-key
# command checks ``isinstance(client, RedisCluster)``.
Client: TypeAlias = Redis | RedisCluster

_SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")


def _standalone_options() -> dict[str, Any]:
    """What a standalone server's pool adds to ``connect``'s options: maintenance notifications off
    (see the module), when this redis-py's asyncio pools take the option (older ones have none)."""
    if "maint_notifications_config" not in inspect.signature(ConnectionPool.__init__).parameters:
        return {}
    from redis.maint_notifications import MaintNotificationsConfig

    return {"maint_notifications_config": MaintNotificationsConfig(enabled=False)}


_STANDALONE_OPTIONS = _standalone_options()


def connect(
    url: str, *, socket_timeout: float = SOCKET_TIMEOUT, connect_timeout: float = SOCKET_TIMEOUT
) -> Client:
    """A pooled client for ``url`` (see the module for the forms) whose calls fail fast by default: a
    request never waits long on Redis. The config store passes longer timeouts."""
    scheme, separator, _ = url.partition("://")
    kind = scheme.lower()
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "max_connections": MAX_CONNECTIONS,
    }
    if separator and kind in ("redis+sentinel", "rediss+sentinel"):
        return _sentinel_master(url, kind.startswith("rediss"), options)
    if separator and kind in ("redis+cluster", "rediss+cluster"):
        return _cluster(url, kind.startswith("rediss"), options)
    # The URL's own options (max_connections=...) win over these: redis-py applies them last.
    pool = BlockingConnectionPool.from_url(url, timeout=socket_timeout, **options, **_STANDALONE_OPTIONS)
    return Redis.from_pool(pool)  # closing the client closes the pool


class _SentinelMaster(Redis):
    """The master's client, which also closes its connections to the sentinels."""

    sentinels: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinels is not None:
            for client in self.sentinels.sentinels:
                await client.aclose()


def _sentinel_master(url: str, tls: bool, timeouts: dict[str, Any]) -> Redis:
    nodes, path, options = _split(url, SENTINEL_PORT)
    service, _, db = path.strip("/").partition("/")
    if not service:
        raise ValueError(f"{redacted(url)}: a Sentinel URL names the service: .../<service_name>[/<db>]")
    sentinel_kwargs: dict[str, Any] = dict(timeouts)
    for name in _SENTINEL_OPTIONS:
        value = options.pop(name, None)
        if value is not None:
            sentinel_kwargs[name.removeprefix("sentinel_")] = value
    data = {**timeouts, **options}
    if db:
        data.setdefault("db", _number(db, url))
    if tls:
        data["ssl"] = True
        sentinel_kwargs.update({"ssl": True, **{k: v for k, v in data.items() if k.startswith("ssl_")}})
    sentinel = Sentinel(nodes, sentinel_kwargs=sentinel_kwargs, **data)  # type: ignore[no-untyped-call]
    master = sentinel.master_for(unquote(service), redis_class=_SentinelMaster)
    assert isinstance(master, _SentinelMaster)
    master.sentinels = sentinel
    return master


class _Cluster(RedisCluster):
    """redis-py's cluster client, which finds the cluster's nodes before it routes a command. redis-py
    routes a command issued before that without its key's slot; a burst of first commands (a gateway
    that has just started) then had some fail on connections closed under them (seen with redis-py
    8.1; tests/e2e/test_redis_topologies.py sends such a burst)."""

    async def execute_command(self, *args: EncodableT, **kwargs: Any) -> Any:
        if self._initialize:
            await self.initialize()  # under redis-py's own lock: one caller initialises, the others wait
        return await super().execute_command(*args, **kwargs)


def _cluster(url: str, tls: bool, timeouts: dict[str, Any]) -> RedisCluster:
    nodes, path, options = _split(url, CLUSTER_PORT)
    if path.strip("/") not in ("", "0") or options.get("db", 0) != 0:
        raise ValueError(f"{redacted(url)}: a Redis Cluster has no database but 0")
    if any(name in options for name in _SENTINEL_OPTIONS):
        raise ValueError(f"{redacted(url)}: sentinel options in a Redis Cluster URL")
    options.pop("db", None)
    startup = [ClusterNode(host, port) for host, port in nodes]
    return _Cluster(startup_nodes=startup, ssl=tls, **{**timeouts, **options})


def _split(url: str, default_port: int) -> tuple[list[tuple[str, int]], str, dict[str, Any]]:
    """The ``host:port`` list, the path and the client options (user, password, query) of a URL
    with several hosts (which ``urllib`` does not parse)."""
    rest, _, query = url.partition("://")[2].partition("#")[0].partition("?")
    authority, slash, path = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    pairs = parse_qsl(query, keep_blank_values=True)
    options: dict[str, Any] = {key: value for key, value in pairs if key in _SENTINEL_OPTIONS}
    others = urlencode([(key, value) for key, value in pairs if key not in _SENTINEL_OPTIONS])
    if others:  # redis-py's own option names and types (socket_timeout=1.5, ssl_cert_reqs=none, ...)
        parsed: dict[str, Any] = dict(parse_url("redis://localhost?" + others))
        parsed.pop("host", None)
        options.update(parsed)
    if at:
        user, colon, password = userinfo.partition(":")
        if user:
            options["username"] = unquote(user)
        if colon and password:
            options["password"] = unquote(password)
    nodes = [_host_port(item, default_port, url) for item in hosts.split(",") if item]
    if not nodes:
        raise ValueError(f"{redacted(url)}: no host")
    return nodes, slash + path, options


def _host_port(item: str, default_port: int, url: str) -> tuple[str, int]:
    if item.startswith("["):  # [::1]:26379
        host, _, port = item[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
    return unquote(host), _number(port, url) if port else default_port


def _number(text: str, url: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{redacted(url)}: {text!r} is not a number") from None


class Outage:
    """One store's view of its Redis (or of another storage, named by ``storage``; "" for a label
    that says it all): down (skip it) for a second after each failure."""

    __slots__ = ("_down_until", "_subject", "_url", "failures")

    def __init__(self, label: str, url: str, storage: str = "redis") -> None:
        # The start of the log lines, e.g. "rate limit store redis".
        self._subject = f"{label} {storage}" if storage else label
        self._url = url
        self._down_until = 0.0
        self.failures = 0  # operations that could not reach Redis

    def down(self) -> bool:
        return bool(self._down_until) and time.monotonic() < self._down_until

    def failed(self, exc: BaseException, consequence: str = "") -> None:
        self.failures += 1
        if not self._down_until:
            logger.warning(
                "%s at %s is unreachable%s: %s", self._subject, redacted(self._url), consequence, exc
            )
        self._down_until = time.monotonic() + RETRY_SECONDS

    def reached(self) -> None:
        if self._down_until:
            logger.warning("%s at %s is reachable again", self._subject, redacted(self._url))
            self._down_until = 0.0
