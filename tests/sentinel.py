"""Real redis-servers for the Sentinel tests (tests/e2e/test_redis_topologies.py,
tests/e2e/test_redis_failover.py): a master, a replica and one sentinel on 127.0.0.1, each in its own
directory, each stopped by PID whatever the test's outcome."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from redis import Redis as SyncRedis

from tests.processes import Server, free_port, server_process

SERVICE = "kairos"
BASE = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]


def program(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: run `make system-deps` (the redis-server package)")
    return found


@contextmanager
def redis_process(tmp: Path, name: str, *extra: str) -> Iterator[Server]:
    """A redis-server (``--sentinel`` among ``extra`` for a sentinel) with its own directory."""
    port = free_port()
    home = tmp / f"{name}-{port}"
    home.mkdir()
    args = ["--port", str(port), *BASE, "--dir", str(home), *extra]
    with server_process(args, port, tmp / f"{name}-{port}.log", program=program("redis-server")) as server:
        yield server


def until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> float:
    """Poll ``check`` until it holds (at most ``timeout`` seconds); the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if check():
                return time.monotonic() - start
        except Exception:  # a server still starting
            pass
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


def sync_client(port: int) -> SyncRedis:
    return SyncRedis(host="127.0.0.1", port=port, socket_timeout=2, decode_responses=True)


@dataclass
class SentinelSet:
    master: Server
    replica: Server
    sentinel: Server

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{SERVICE}/0"

    def master_port(self) -> int:
        """The master's port as the sentinel names it now."""
        with sync_client(self.sentinel.port) as sentinel:
            return int(sentinel.sentinel_get_master_addr_by_name(SERVICE)[1])


@contextmanager
def sentinel_servers(tmp: Path) -> Iterator[SentinelSet]:
    """A master, its replica (synced) and one sentinel that knows both; quorum 1, the master called
    down after 500 ms without an answer."""
    with ExitStack() as stack:
        # No 5 s wait for more replicas before the first (diskless) full sync.
        master = stack.enter_context(redis_process(tmp, "master", "--repl-diskless-sync-delay", "0"))
        replica = stack.enter_context(
            redis_process(tmp, "replica", "--replicaof", "127.0.0.1", str(master.port))
        )
        with sync_client(replica.port) as client:
            until(lambda: client.info("replication")["master_link_status"] == "up", "the replica syncs")
        # The sentinel is started once the replica is attached: it learns of it from the master's
        # first INFO instead of ten seconds later.
        port = free_port()
        conf = tmp / f"sentinel-{port}.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {tmp}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master.port} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} 500\nsentinel failover-timeout {SERVICE} 3000\n"
        )
        log = tmp / f"sentinel-{port}.log"
        sentinel = stack.enter_context(
            server_process([str(conf), "--sentinel"], port, log, program=program("redis-server"))
        )
        with sync_client(port) as client:

            def replica_known() -> bool:
                replicas = client.sentinel_slaves(SERVICE)
                return any(r["flags"] == "slave" and r["master-link-status"] == "ok" for r in replicas)

            until(replica_known, "the sentinel knows the replica")
        yield SentinelSet(master, replica, sentinel)
