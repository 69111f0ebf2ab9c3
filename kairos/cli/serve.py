"""``kairos run``: the gateway under uvicorn with the production settings (SERVER_OPTIONS)."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any


def run(host: str | None, port: int | None, workers: int | None, config: Path | None) -> int:
    """Start the gateway; the exit code (1: invalid config, 2: bad environment). SIGTERM or SIGINT
    drains it first (kairos/server.py, DrainingServer), then it returns 0."""
    import uvicorn

    from kairos.config import ConfigError, load_file
    from kairos.logs import level_name
    from kairos.server import serve
    from kairos.settings import SettingsError, load_settings

    if config:
        os.environ["KAIROS_CONFIG_PATH"] = str(config)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    host = host or settings.host
    port = port or settings.port
    workers = workers or settings.workers
    level = level_name(settings.log_level).lower()
    # Validate up front so an invalid file prints its errors once and exits 1, before any worker.
    if settings.config_path.exists():
        try:
            load_file(settings.config_path)
        except ConfigError as exc:
            print(f"{exc.source}: invalid config, not starting", file=sys.stderr)
            for problem in exc.problems:
                print(f"  error: {problem}", file=sys.stderr)
            return 1
    temporary = _multiprocess_metrics(workers)
    raise_open_files_limit()
    try:
        # uvicorn.run() with kairos/server.py's draining server: uvicorn.run takes no server class.
        serve(
            uvicorn.Config(
                "kairos.app:app", host=host, port=port, workers=workers, log_level=level, **SERVER_OPTIONS
            )
        )
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    return 0


# How `kairos run` serves the app (kairos/server.py says why each one): uvloop, uvicorn's httptools
# protocol behind the connection guard, the WebSocket implementation that ends a refused upgrade
# quietly (and closes with 1001 at shutdown), no access log (Kairos has its own), client addresses
# from the socket (Kairos resolves trusted proxies itself), and one Server header naming the gateway.
# The drain on SIGTERM is the server class's (kairos.server.serve), with KAIROS_DRAIN_* settings.
SERVER_OPTIONS: dict[str, Any] = {
    "loop": "uvloop",
    "http": "kairos.server:GuardedHttpToolsProtocol",
    "ws": "kairos.server:QuietDenialWebSocketProtocol",
    "access_log": False,
    "proxy_headers": False,
    "server_header": False,
    "headers": [("server", "kairos")],
}


def raise_open_files_limit() -> None:
    """Lift the soft RLIMIT_NOFILE to the hard limit, as Go's runtime and nginx's
    ``worker_rlimit_nofile`` do: a 1024 soft limit is a gateway's first bottleneck (each proxied
    request holds two descriptors), and the connection cap, not the OS, should say no first."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    with contextlib.suppress(ValueError, OSError):  # not allowed here: the soft limit stays
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _multiprocess_metrics(workers: int) -> Path | None:
    """Prepare ``PROMETHEUS_MULTIPROC_DIR`` before any worker starts, so ``/metrics`` adds up all
    workers (kairos/observability/multiprocess.py): wipe the ``*.db`` files a previous run left in
    the operator's directory, or, with several workers and no directory set, make a temporary one
    (returned, removed at exit). One worker without the variable: plain in-process metrics."""
    from kairos.observability.multiprocess import ENV, configured_directory, wipe

    directory = configured_directory()
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        removed = wipe(directory)
        print(f"kairos: {ENV}={directory} (removed {removed} file(s) of a previous run)", file=sys.stderr)
        return None
    if workers <= 1:
        return None
    temporary = Path(tempfile.mkdtemp(prefix="kairos-metrics-"))
    os.environ[ENV] = str(temporary)  # inherited by the workers uvicorn starts
    print(f"kairos: {ENV}={temporary} (temporary, removed at exit) for {workers} workers", file=sys.stderr)
    return temporary
