"""OpenAI-compatible chat completions through Kairos, side by side with LiteLLM Proxy and the provider direct.

One fake provider (tests/servers/fake_llm.py, the one the tests use: model names ``echo-*`` answer
the words of ``"echo: " + the last user message`` then ``w1 w2 ...``, exactly ``max_tokens`` of
them, with usage; ``"stream": true`` gives OpenAI's SSE, one event per word) on the load CPU, with
wrk, the time-to-first-token client and this script. Each gateway alone on the SUT CPU (pinned
with taskset, one process, one worker):

- ``direct``: requests straight to the fake provider (``model: echo-bench``): the floor;
- ``kairos``: ``python -m kairos run`` (from a snapshot of the code, as bench/suts.py runs it) with
  one ``llm`` route, public model ``bench`` -> ``openai/echo-bench`` at the fake provider, and
  ``KAIROS_ANALYTICS=false``: the gateway's own overhead. The target's transport is the default
  (``auto``), which for an ``openai`` target is the direct one (kairos/llm/direct.py: HTTP, no SDK);
- ``kairos-analytics``: the same with request analytics on (SQLite next to the config, the default):
  what one analytics record per call costs;
- ``kairos-litellm``: ``kairos`` with ``"transport": "litellm"``: the provider called through litellm's
  SDK, as for the providers whose wire is not OpenAI's;
- ``litellm-proxy``: LiteLLM Proxy (``litellm --config config.yaml``, uvicorn, one worker) with the
  same model (``model_list: [{model_name: bench, litellm_params: {model: openai/echo-bench,
  api_base, api_key}}]``), a master key (it refuses to start without one; no database, so the key
  is checked in memory), ``LITELLM_LOG=ERROR`` (no access log, as Kairos by default),
  ``LITELLM_LOCAL_MODEL_COST_MAP=True`` and ``LITELLM_TELEMETRY=False`` (nothing fetched from the
  internet), no ``DATABASE_URL``; it calls the provider through litellm's SDK. It is installed by this
  script in its own venv, ``bench/.venv-litellm-proxy`` (its dependencies would clash with the
  gateway's pinned ones), with the litellm version the gateway's venv has: ``litellm[proxy]==V``, or,
  when that extra cannot be resolved (litellm 1.110's extra needs a ``litellm-proxy`` package that
  PyPI does not serve), ``litellm==V`` plus the proxy dependencies litellm 1.109.3's extra listed
  (``PROXY_FALLBACK``).

Per round, each way in turn (the order rotating with the round), nothing else loaded meanwhile:
non-streaming and streaming chat completions (16 words: 19 SSE events), each with ``wrk -c1`` (p50
and p99: wrk times a request until its response ends, the whole stream for SSE) and ``wrk -cC``
(requests/s, C = 50), a Lua script POSTing the JSON body; then ``TTFT_REQUESTS`` sequential
streaming requests from a Python client (httpx, one keep-alive connection) timing the first
``data:`` event. Before and after every run the script waits until the gateways are idle (at c=50
a slow one is still working on what wrk left in flight seconds later). CPU per request: the
gateway's utime+stime (/proc, all threads) from a run's start until it is idle again, over the
calls the provider received. Every request of a run must reach the provider (its call counter is
read after each run) and answer 200, or the run is left out. Ratios and differences are taken
within a round, then the median across rounds is the figure.

Goals: Kairos's added latency at c=1 (its p50 minus direct's) at most 1/5 of LiteLLM Proxy's,
non-streaming and streaming; Kairos's requests/s at c=50 at least 3x LiteLLM Proxy's, both kinds;
time to first token added by Kairos at most 1 ms.

Traffic goes to 127.0.0.1 only: the gateways' sockets are checked for any other peer after every
run, and their logs for failed lookups or fetches. Every wrk run is bounded by ``-d`` (and a
subprocess timeout), the TTFT loops by count and time, the rounds by ``RUN_SECONDS``; every process
started here is stopped by its PID.

Time: about 2.5 min per round (5 ways x (4 wrk runs + 300 streams), waits included) plus ~1.5 min to
start and warm up the gateways; the first run on a machine also installs LiteLLM Proxy (~1 min).

Run alone: ``.venv/bin/python bench/llm_bench.py [--rounds N] [--duration S] [--ttft-requests N]
[--ways W,...] [--json]``; the report section goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import re
import resource
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from load import WrkResult, parse_wrk
from procs import children, cpu_seconds, cpus, free_port, http_get, pinned, start, stop, wait_ready
from suts import snapshot_kairos

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PROXY_VENV = BENCH / ".venv-litellm-proxy"  # in .gitignore
PROXY_MARKER = PROXY_VENV / "kairos-bench.json"  # what was installed, written once the import works
ROUNDS = 5
DURATION = 5.0  # seconds of each wrk run
WARMUP = 2.0  # seconds of discarded load per way and kind before the first round
CONNECTIONS = 50  # the throughput runs
TTFT_REQUESTS = 300  # sequential streaming requests per way and round
TTFT_SECONDS = 60.0  # at most, per way and round
WORDS = 16  # max_tokens: the answer's words, one SSE event each
PROMPT = "How much does a gateway add to a chat completion"
RUN_SECONDS = 960.0  # the rounds: one that would end past this (by the last one's time) is skipped
SETTLE_SECONDS = 30.0  # at most, waiting for the gateways to finish what a run left in flight
IDLE_CPU = 0.05  # "idle": under this share of a core over SETTLE_WINDOW
SETTLE_WINDOW = 0.5
START_SECONDS = 180.0  # at most, for a gateway to answer after its start
BUSY = 0.9  # a core this busy during a run is that run's limit
GOAL_LATENCY_SHARE = 0.2  # Kairos's added p50 at c=1 over LiteLLM Proxy's
GOAL_THROUGHPUT = 3.0  # Kairos's requests/s at c=50 over LiteLLM Proxy's
GOAL_TTFT_MS = 1.0  # time to first token added by Kairos
PROVIDER_MODEL = "echo-bench"
PROVIDER_KEY = "sk-bench"
PUBLIC_MODEL = "bench"
WAYS = ("direct", "kairos", "kairos-analytics", "kairos-litellm", "litellm-proxy")
KINDS = ("chat", "stream")
LABELS = {
    "direct": "provider direct",
    "kairos": "Kairos",
    "kairos-analytics": "Kairos, analytics on (SQLite)",
    "kairos-litellm": "Kairos, litellm transport",
    "litellm-proxy": "LiteLLM Proxy",
}
KIND_LABELS = {"chat": "non-streaming", "stream": f"streaming ({WORDS} words)"}
# litellm 1.109.3's [proxy] extra (the last one that lists its dependencies itself), the two
# BerriAI packages unpinned (the registry may lag behind), plus semver (imported by the 1.110 proxy).
PROXY_FALLBACK = (
    "gunicorn>=23.0.0,<24.0",
    "uvicorn>=0.33.0,<1.0",
    "granian>=2.7.4,<3.0",
    "uvloop>=0.22.1,<1.0",
    "fastapi>=0.136.3,<1.0",
    "starlette>=1.0.1,<2.0",
    "backoff>=2.2.1,<3.0",
    "pyyaml>=6.0.3,<7.0",
    "rq>=2.7.0,<3.0",
    "orjson>=3.11.6,<4.0",
    "hiredis>=3.0.0,<4.0",
    "apscheduler>=3.11.2,<4.0",
    "fastapi-sso>=0.19.0,<1.0",
    "pyjwt>=2.13.0,<3.0",
    "python-multipart>=0.0.27,<1.0",
    "cryptography>=49.0.0,<51.0",
    "pynacl>=1.6.2,<2.0",
    "websockets>=15.0.1,<16.0",
    "boto3>=1.43.117,<2.0",
    "azure-identity>=1.25.2,<2.0",
    "azure-storage-blob>=12.28.0,<13.0",
    "mcp>=2.3.0,<3",
    "httpx2>=2.10.0,<3",
    "pydantic>=2.12.0,<3",
    "litellm-proxy-extras",
    "litellm-enterprise",
    "restrictedpython>=8.5,<9.0",
    "rich>=13.9.4,<14.0",
    "inquirerpy>=0.3.4,<1.0",
    "tomlkit>=0.13.3,<1.0",
    "polars>=1.38.1,<2.0",
    "soundfile>=0.12.1,<1.0",
    "pyroscope-io>=0.8.16,<1.0",
    "expression>=5.6.0,<6.0",
    "backports-zstd>=1.0.0,<2.0; python_version < '3.14'",
    "semver",
)
# Signs in a gateway's log that it tried to reach something off this machine.
OUTBOUND_PATTERNS = re.compile(
    r"ConnectError|Name or service not known|Temporary failure in name resolution|getaddrinfo|"
    r"Network is unreachable|Failed to fetch|fetch attempt|raw\.githubusercontent|telemetry",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Run:
    """One wrk run. ``sut_cpu``: the gateway's CPU seconds over it (None for direct); ``drained_cpu``:
    from its start until the gateway was idle again (the requests wrk left in flight finished too):
    over ``provider_calls`` (chat calls the provider received, every one a request the gateway
    handled whole) it is the CPU per request, with no ramp at the start or cut at the end to skew it;
    ``provider_cpu``/``wrk_cpu``: the load CPU's two users; ``idle_cpu``: what the other gateways
    (idle, on the same CPU) used meanwhile."""

    round: int
    way: str
    kind: str  # chat | stream
    connections: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    sut_cpu: float | None
    drained_cpu: float | None
    provider_cpu: float
    wrk_cpu: float
    idle_cpu: float
    provider_calls: int


@dataclass(frozen=True, slots=True)
class Ttft:
    """``count`` sequential streaming requests: to the first ``data:`` event and to the end."""

    round: int
    way: str
    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    whole_p50_ms: float
    events: int  # data: events of a stream ([DONE] included), the median


@dataclass(slots=True)
class LlmResults:
    rounds: int
    duration: float = 0.0
    connections: int = 0
    ttft_requests: int = 0
    words: int = 0
    runs: list[Run] = field(default_factory=list)
    ttfts: list[Ttft] = field(default_factory=list)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)  # way -> what its answers looked like
    info: dict[str, str] = field(default_factory=dict)  # versions, code snapshot, load averages, setup
    errors: dict[str, str] = field(default_factory=dict)  # "setup", "round N way kind" -> what failed

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LlmResults:
        return cls(
            data["rounds"],
            data["duration"],
            data["connections"],
            data["ttft_requests"],
            data["words"],
            [Run(**item) for item in data["runs"]],
            [Ttft(**item) for item in data["ttfts"]],
            {way: dict(values) for way, values in data["checks"].items()},
            dict(data["info"]),
            dict(data["errors"]),
        )


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- LiteLLM Proxy's venv ----------------------------------------------------------------------------


def litellm_version() -> str:
    """The litellm the gateway runs (this interpreter's venv)."""
    return importlib.metadata.version("litellm")


def proxy_env() -> dict[str, str]:
    """The environment LiteLLM runs in: nothing of ours, no database, nothing fetched, errors only."""
    dropped = ("LITELLM_", "KAIROS_", "DATABASE_", "DIRECT_URL", "REDIS_", "OPENAI_", "PYTHONPATH")
    env = {key: value for key, value in os.environ.items() if not key.startswith(dropped)}
    env.update(
        {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_TELEMETRY": "False",
            "LITELLM_LOG": "ERROR",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    return env


def ensure_litellm_proxy(version: str) -> dict[str, str]:
    """LiteLLM Proxy ``version`` in PROXY_VENV, installed when missing or of another version;
    returns what is installed (the marker file). pip's chatter goes to stderr."""
    python = PROXY_VENV / "bin" / "python"
    try:
        marker = json.loads(PROXY_MARKER.read_text())
        if marker.get("litellm") == version and python.exists():
            return dict(marker)
    except (OSError, ValueError):
        pass
    log(f"llm: installing LiteLLM Proxy {version} in {PROXY_VENV} (once)")
    shutil.rmtree(PROXY_VENV, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(PROXY_VENV)], check=True, timeout=300)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
    how = f"litellm[proxy]=={version}"
    done = subprocess.run([*pip, how], timeout=1200, stdout=sys.stderr, check=False)
    if done.returncode != 0:
        how = (
            f"litellm=={version} + litellm 1.109.3's [proxy] dependencies (bench/llm_bench.py PROXY_FALLBACK)"
        )
        log(f"llm: litellm[proxy]=={version} cannot be installed; trying {how}")
        subprocess.run(
            [*pip, f"litellm=={version}", *PROXY_FALLBACK], timeout=1200, stdout=sys.stderr, check=True
        )
    check = subprocess.run(
        [str(python), "-c", "import litellm.proxy.proxy_server"],
        env=proxy_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tempfile.gettempdir(),
    )
    if check.returncode != 0:
        raise RuntimeError(f"LiteLLM Proxy does not import: {check.stderr.strip()[-300:]}")
    marker = {"litellm": version, "installed": how, **proxy_versions()}
    PROXY_MARKER.write_text(json.dumps(marker, indent=2))
    return marker


def proxy_versions() -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json\n"
        "names = ('litellm', 'fastapi', 'starlette', 'uvicorn', 'uvloop', 'httptools', 'aiohttp', 'httpx')\n"
        "found = {}\n"
        "for name in names:\n"
        "    try:\n"
        "        found[name] = m.version(name)\n"
        "    except m.PackageNotFoundError:\n"
        "        found[name] = '-'\n"
        "print(json.dumps(found))\n"
    )
    done = subprocess.run(
        [str(PROXY_VENV / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    versions = json.loads(done.stdout)
    return {"proxy_versions": ", ".join(f"{name} {value}" for name, value in versions.items())}


def gateway_versions() -> str:
    names = ("litellm", "uvicorn", "uvloop", "httptools", "aiohttp", "httpx")
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} -")
    return ", ".join(found)


def wrk_version() -> str:
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=10, check=False)
    match = re.search(r"wrk (\S+)", done.stdout + done.stderr)
    return f"wrk {match[1] if match else '?'}"


# -- requests ----------------------------------------------------------------------------------------


def expected_content() -> str:
    """What the fake provider's echo mode answers to PROMPT with ``max_tokens`` = WORDS."""
    words = f"echo: {PROMPT}".split()[:WORDS]
    words += [f"w{index}" for index in range(1, WORDS - len(words) + 1)]
    return " ".join(words)


@dataclass(slots=True)
class Server:
    way: str
    base: str  # http://127.0.0.1:P/v1
    model: str  # the model name requests carry
    key: str  # their bearer token
    process: subprocess.Popen[bytes] | None = None  # None: direct (nothing in between)
    log_file: Path | None = None
    workers: list[tuple[int, int]] = field(default_factory=list)  # children, (pid, start time)
    analytics_db: Path | None = None

    def pids(self) -> list[int]:
        if self.process is None:
            return []
        return [self.process.pid, *(pid for pid, _ in self.workers)]

    def cpu(self) -> float:
        return cpu_seconds(self.pids())

    def body(self, stream: bool) -> bytes:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": WORDS,
        }
        if stream:
            payload["stream"] = True
        return json.dumps(payload).encode()

    def headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", "Authorization": f"Bearer {self.key}"}


@dataclass(slots=True)
class Setup:
    provider: subprocess.Popen[bytes]
    provider_url: str  # http://127.0.0.1:F
    servers: dict[str, Server]  # by way
    scripts: dict[tuple[str, str], Path]  # (way, kind) -> wrk's Lua script
    sut_cpu: int
    load_cpu: int
    logs: Path
    calls: dict[str, int] = field(default_factory=dict)  # provider calls per way, all activities


def http_post(url: str, payload: dict[str, Any], timeout: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (OSError, urllib.error.URLError):
        return 0, b""


def provider_reset(setup: Setup) -> None:
    """Clear the provider's call records (they grow with every call) before an activity."""
    status, _ = http_post(f"{setup.provider_url}/_reset", {})
    if status != 200:
        raise RuntimeError(f"the fake provider's /_reset answered {status}")


def provider_hits(setup: Setup, way: str) -> int:
    """Chat calls since the last reset, also added to the way's total."""
    status, body = http_get(f"{setup.provider_url}/_stats", timeout=30)
    if status != 200:
        raise RuntimeError(f"the fake provider's /_stats answered {status}")
    hits = int(json.loads(body)["chat_hits"])
    setup.calls[way] = setup.calls.get(way, 0) + hits
    return hits


def verify(server: Server) -> dict[str, Any]:
    """One answer of each kind, checked whole: the echo content, usage, the stream's events in
    order and its clean end. Returns what was seen (for the report)."""
    expected = expected_content()
    url = f"{server.base}/chat/completions"
    with httpx.Client(timeout=30) as client:
        response = client.post(url, content=server.body(False), headers=server.headers())
        if response.status_code != 200:
            raise RuntimeError(f"{server.way}: answered {response.status_code}: {response.text[:200]}")
        answer = response.json()
        content = answer["choices"][0]["message"]["content"]
        if content != expected:
            raise RuntimeError(f"{server.way}: content {content!r}, expected {expected!r}")
        if int((answer.get("usage") or {}).get("completion_tokens") or 0) != WORDS:
            raise RuntimeError(f"{server.way}: usage {answer.get('usage')}")
        size = len(response.content)
        with client.stream("POST", url, content=server.body(True), headers=server.headers()) as streamed:
            if streamed.status_code != 200:
                raise RuntimeError(f"{server.way}: a stream answered {streamed.status_code}")
            kind = streamed.headers.get("content-type", "")
            events = [line[5:].strip() for line in streamed.iter_lines() if line.startswith("data:")]
    if not kind.startswith("text/event-stream"):
        raise RuntimeError(f"{server.way}: a stream came as {kind!r}")
    if not events or events[-1] != "[DONE]":
        raise RuntimeError(f"{server.way}: the stream did not end with [DONE]")
    pieces = []
    for event in events[:-1]:
        for choice in json.loads(event).get("choices") or []:
            pieces.append((choice.get("delta") or {}).get("content") or "")
    if "".join(pieces) != expected:
        raise RuntimeError(
            f"{server.way}: the stream's deltas give {''.join(pieces)!r}, expected {expected!r}"
        )
    return {"json_bytes": size, "events": len(events), "content_events": sum(1 for piece in pieces if piece)}


# -- the servers -------------------------------------------------------------------------------------


def start_provider(cpu: int, logs: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [sys.executable, "-m", "tests.servers.fake_llm", "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = start(pinned(cpu, command), logs / "fake-llm.log", env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/v1/models", process, timeout=30)
    except (RuntimeError, TimeoutError):
        stop(process)
        raise
    return process, url


def launch_kairos(way: str, work: Path, provider: str, cpu: int, code: Path, logs: Path) -> Server:
    """``python -m kairos run`` from ``code`` with the one ``llm`` route; analytics on or off, the
    target's transport the default or litellm's SDK."""
    directory = work / way
    directory.mkdir()
    transport = "litellm" if way == "kairos-litellm" else "auto"
    route = {
        "protocol": "llm",
        "external_path": "/v1",
        "internal_path": "/",
        "methods": ["GET", "POST"],
        "llm": {
            "models": {
                PUBLIC_MODEL: [
                    {
                        "provider": "openai",
                        "model": PROVIDER_MODEL,
                        "api_base": f"{provider}/v1",
                        "api_key": PROVIDER_KEY,
                        "transport": transport,
                    }
                ]
            }
        },
    }
    config = directory / "config.json"
    config.write_text(json.dumps({"version": 1, "routers": [route]}, indent=2))
    env = {
        **os.environ,
        "PYTHONPATH": str(code),
        "KAIROS_CONFIG_PATH": str(config),
        "KAIROS_CONFIG_WATCH": "false",
        "KAIROS_LOG_LEVEL": "warning",
        "KAIROS_ANALYTICS": "true" if way == "kairos-analytics" else "false",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
    }
    env.pop("KAIROS_ANALYTICS_URL", None)
    env.pop("KAIROS_REDIS_URL", None)
    port = free_port()
    command = [sys.executable, "-m", "kairos", "run", "--host", "127.0.0.1", "--port", str(port)]
    log_file = logs / f"{way}.log"
    process = start(pinned(cpu, command), log_file, env, cwd=code)
    server = Server(way, f"http://127.0.0.1:{port}/v1", PUBLIC_MODEL, PROVIDER_KEY, process, log_file)
    if way == "kairos-analytics":
        server.analytics_db = directory / "kairos-analytics.db"
    try:
        wait_ready(f"http://127.0.0.1:{port}/ready", process, timeout=START_SECONDS)
    except (RuntimeError, TimeoutError) as exc:
        stop(process)
        raise RuntimeError(f"{way} did not start: {exc}; see {log_file}") from None
    return server


def launch_litellm(work: Path, provider: str, cpu: int, logs: Path) -> Server:
    """``litellm --config config.yaml`` (uvicorn, one worker) from the bench's own venv."""
    directory = work / "litellm-proxy"  # its cwd: no stray .env is read
    directory.mkdir()
    master_key = f"sk-{secrets.token_hex(32)}"
    config = {
        "model_list": [
            {
                "model_name": PUBLIC_MODEL,
                "litellm_params": {
                    "model": f"openai/{PROVIDER_MODEL}",
                    "api_base": f"{provider}/v1",
                    "api_key": PROVIDER_KEY,
                },
            }
        ],
        "litellm_settings": {"telemetry": False},
        "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
    }
    path = directory / "config.yaml"
    path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
    env = {**proxy_env(), "LITELLM_MASTER_KEY": master_key}
    port = free_port()
    command = [str(PROXY_VENV / "bin" / "litellm"), "--config", str(path)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    log_file = logs / "litellm-proxy.log"
    process = start(pinned(cpu, command), log_file, env, cwd=directory)
    server = Server(
        "litellm-proxy", f"http://127.0.0.1:{port}/v1", PUBLIC_MODEL, master_key, process, log_file
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/health/liveliness", process, timeout=START_SECONDS)
    except (RuntimeError, TimeoutError) as exc:
        stop(process)
        tail = log_file.read_text(errors="replace").strip()[-300:] if log_file.exists() else ""
        raise RuntimeError(f"LiteLLM Proxy did not start: {exc}; {tail}") from None
    return server


def lua_script(path: Path, server: Server, stream: bool) -> Path:
    """wrk's script: every request the same POST (the body in a long bracket: no escaping)."""
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = [==[{server.body(stream).decode()}]==]",
        *(f'wrk.headers["{name}"] = "{value}"' for name, value in server.headers().items()),
        "",
    ]
    path.write_text("\n".join(lines))
    return path


@contextmanager
def serving(
    ways: tuple[str, ...], sut_cpu: int, load_cpu: int, code: Path, logs: Path | None, results: LlmResults
) -> Iterator[Setup]:
    """The fake provider (load CPU) and the gateways of ``ways`` (SUT CPU), all running until the
    block ends, then stopped by PID and their files deleted. A gateway that fails to start or to
    answer correctly is left out (its error recorded); the others go on."""
    work = Path(tempfile.mkdtemp(prefix="kairos-bench-llm-"))
    logs = logs or work
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, work, True)
        provider, provider_url = start_provider(load_cpu, logs)
        stack.callback(stop, provider)
        log(f"  fake provider: pid {provider.pid}, {provider_url} (CPU {load_cpu})")
        servers: dict[str, Server] = {}
        for way in ways:
            try:
                if way == "direct":
                    server = Server(way, f"{provider_url}/v1", PROVIDER_MODEL, PROVIDER_KEY)
                elif way == "litellm-proxy":
                    server = launch_litellm(work, provider_url, sut_cpu, logs)
                else:
                    server = launch_kairos(way, work, provider_url, sut_cpu, code, logs)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                results.errors[f"start {way}"] = str(exc)
                log(f"  {way}: FAILED to start: {exc}")
                continue
            if server.process is not None:
                server.workers = children(server.process.pid)
                stack.callback(stop, server.process, server.workers)
                log(f"  {way}: pid {server.process.pid}, {server.base} (CPU {sut_cpu})")
            servers[way] = server
        setup = Setup(provider, provider_url, {}, {}, sut_cpu, load_cpu, logs)
        for way, server in servers.items():
            try:
                provider_reset(setup)
                results.checks[way] = verify(server)
                provider_hits(setup, way)
            except (RuntimeError, ValueError, KeyError, OSError, httpx.HTTPError) as exc:
                results.errors[f"verify {way}"] = str(exc)
                log(f"  {way}: FAILED the check: {exc}")
                continue
            setup.servers[way] = server
            for kind in KINDS:
                script = lua_script(work / f"{way}-{kind}.lua", server, kind == "stream")
                setup.scripts[(way, kind)] = script
        yield setup


# -- measuring ---------------------------------------------------------------------------------------


def wrk(setup: Setup, way: str, kind: str, connections: int, duration: float) -> tuple[WrkResult, float]:
    """One bounded wrk run (one thread, on the load CPU) with its CPU seconds; raw output kept."""
    server = setup.servers[way]
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--timeout", "10s", "--latency"]
    command += ["-s", str(setup.scripts[(way, kind)]), f"{server.base}/chat/completions"]
    command = pinned(setup.load_cpu, command)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 30, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = done.stdout + done.stderr
    with (setup.logs / "llm-wrk.txt").open("a") as raw:
        raw.write(f"$ {' '.join(command)}\n{output}\n")
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with {done.returncode}: {output.strip()[-300:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return parse_wrk(output), cpu


def others_cpu(setup: Setup, way: str) -> float:
    return sum(server.cpu() for name, server in setup.servers.items() if name != way)


def settle(setup: Setup) -> float:
    """Wait until every gateway and the provider are idle again: a run at c=C ends with requests
    in flight that a gateway goes on working on after wrk has gone (seconds of CPU for a slow one),
    which would land in the next measurement. Returns the seconds waited (bounded)."""
    pids = [pid for server in setup.servers.values() for pid in server.pids()] + [setup.provider.pid]
    started = time.monotonic()
    while time.monotonic() - started < SETTLE_SECONDS:
        before = [cpu_seconds([pid]) for pid in pids]
        time.sleep(SETTLE_WINDOW)
        after = [cpu_seconds([pid]) for pid in pids]
        if all(end - begin <= IDLE_CPU * SETTLE_WINDOW for begin, end in zip(before, after, strict=True)):
            break
    return time.monotonic() - started


def measure_run(
    setup: Setup, results: LlmResults, way: str, kind: str, connections: int, round_no: int
) -> Run:
    server = setup.servers[way]
    if server.process is not None and server.process.poll() is not None:
        raise RuntimeError(f"{way} exited with code {server.process.returncode}")
    settle(setup)
    provider_reset(setup)
    sut_before = server.cpu() if server.process is not None else None
    provider_before = cpu_seconds([setup.provider.pid])
    idle_before = others_cpu(setup, way)
    result, wrk_cpu = wrk(setup, way, kind, connections, results.duration)
    sut_cpu = server.cpu() - sut_before if sut_before is not None else None
    provider_cpu = cpu_seconds([setup.provider.pid]) - provider_before
    idle_cpu = others_cpu(setup, way) - idle_before
    settle(setup)  # the calls still in flight when wrk stopped reach the provider too
    drained_cpu = server.cpu() - sut_before if sut_before is not None else None
    calls = provider_hits(setup, way)
    check_outbound(setup, results)
    return Run(
        round_no,
        way,
        kind,
        connections,
        result.requests,
        result.seconds,
        result.rps,
        result.p50_ms,
        result.p99_ms,
        result.errors,
        sut_cpu,
        drained_cpu,
        provider_cpu,
        wrk_cpu,
        idle_cpu,
        calls,
    )


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted ``values``."""
    return values[min(len(values) - 1, max(0, math.ceil(fraction * len(values)) - 1))]


def measure_ttft(setup: Setup, results: LlmResults, way: str, round_no: int) -> Ttft:
    """``ttft_requests`` sequential streams on one keep-alive connection (after one untimed): the
    time from sending to the first ``data:`` line, and to the stream's end."""
    server = setup.servers[way]
    url, body, headers = f"{server.base}/chat/completions", server.body(True), server.headers()
    firsts: list[float] = []
    wholes: list[float] = []
    counts: list[int] = []
    settle(setup)
    provider_reset(setup)
    deadline = time.monotonic() + TTFT_SECONDS
    with httpx.Client(timeout=10) as client:
        for index in range(results.ttft_requests + 1):
            if time.monotonic() > deadline:
                break
            started = time.perf_counter()
            first = None
            events = 0
            with client.stream("POST", url, content=body, headers=headers) as response:
                if response.status_code != 200:
                    raise RuntimeError(f"a stream answered {response.status_code}")
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        if first is None:
                            first = time.perf_counter()
                        events += 1
            ended = time.perf_counter()
            if first is None:
                raise RuntimeError("a stream without a data: event")
            if index:  # the first one opened the connection
                firsts.append((first - started) * 1000)
                wholes.append((ended - started) * 1000)
                counts.append(events)
    provider_hits(setup, way)
    if len(firsts) < results.ttft_requests // 2:
        raise RuntimeError(f"only {len(firsts)} streams within {TTFT_SECONDS:g} s")
    firsts.sort()
    return Ttft(
        round_no,
        way,
        len(firsts),
        percentile(firsts, 0.50),
        percentile(firsts, 0.90),
        percentile(firsts, 0.99),
        statistics.median(wholes),
        int(statistics.median(counts)),
    )


def warm_up(setup: Setup, results: LlmResults, way: str) -> None:
    """WARMUP seconds of c=C load per kind, discarded (litellm builds state on first use)."""
    for kind in KINDS:
        provider_reset(setup)
        wrk(setup, way, kind, results.connections, WARMUP)
        settle(setup)
        provider_hits(setup, way)


def measure_round(setup: Setup, results: LlmResults, round_no: int) -> None:
    """Every way in turn, the order rotating with the round: per kind a c=1 and a c=C wrk run,
    then the time-to-first-token client."""
    ways = list(setup.servers)
    shift = (round_no - 1) % len(ways)
    for way in ways[shift:] + ways[:shift]:
        for kind in KINDS:
            for connections in (1, results.connections):
                key = f"round {round_no} {way} {kind} c={connections}"
                try:
                    cell = measure_run(setup, results, way, kind, connections, round_no)
                except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as exc:
                    results.errors[key] = str(exc)
                    log(f"  llm {key}: FAILED: {exc}")
                    continue
                results.runs.append(cell)
                log(f"  llm {key}: {describe(cell)}")
        key = f"round {round_no} {way} ttft"
        try:
            ttft = measure_ttft(setup, results, way, round_no)
        except (RuntimeError, ValueError, OSError, httpx.HTTPError) as exc:
            results.errors[key] = str(exc)
            log(f"  llm {key}: FAILED: {exc}")
            continue
        results.ttfts.append(ttft)
        log(
            f"  llm {key}: p50 {ttft.p50_ms:.2f} ms, p99 {ttft.p99_ms:.2f} ms, whole stream "
            f"{ttft.whole_p50_ms:.2f} ms ({ttft.count} streams, {ttft.events} events)"
        )


def describe(cell: Run) -> str:
    cpu = f", {cpu_us(cell):,.0f} µs CPU/req" if cell.sut_cpu is not None else ""
    problems = []
    if cell.errors:
        problems.append(f"{cell.errors} ERRORS")
    if cell.provider_calls < cell.requests:
        problems.append(f"only {cell.provider_calls} provider calls")
    flagged = f" ({', '.join(problems)})" if problems else ""
    return (
        f"{cell.rps:,.0f} req/s, p50 {cell.p50_ms:.2f} ms, p99 {cell.p99_ms:.2f} ms{cpu}, provider core "
        f"{cell.provider_cpu / cell.seconds:.0%}{flagged}"
    )


# -- staying on 127.0.0.1 ----------------------------------------------------------------------------


def _peer(hex_address: str) -> tuple[str, int]:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        address = ".".join(str(byte) for byte in raw[::-1])
    else:  # IPv6: four little-endian 32-bit words
        words = [raw[index : index + 4][::-1] for index in range(0, 16, 4)]
        joined = b"".join(words)
        address = ":".join(joined[index : index + 2].hex() for index in range(0, 16, 2))
    return address, int(port, 16)


def _local(address: str) -> bool:
    loopback6 = ("0000:0000:0000:0000:0000:0000:0000:0001", "0000:0000:0000:0000:0000:ffff:7f")
    return address.startswith("127.") or address.startswith(loopback6) or set(address) <= {"0", ":", "."}


def outbound(pid: int) -> list[str]:
    """The process's sockets connected to anything but loopback (its fds matched against its net
    namespace's tables)."""
    inodes = set()
    try:
        for entry in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{entry}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return []
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[9] not in inodes:
                continue
            address, port = _peer(fields[2])
            if port and not _local(address):
                found.append(f"{table} {address}:{port}")
    return found


def check_outbound(setup: Setup, results: LlmResults) -> None:
    for way, server in setup.servers.items():
        for pid in server.pids():
            for peer in outbound(pid):
                results.errors.setdefault(f"outbound {way}", f"a socket to {peer}")
                log(f"  llm: {way} has a socket to {peer}: NOT local")


def log_signs(setup: Setup) -> dict[str, int]:
    """Lines of each gateway's log that look like an attempt to reach the internet."""
    found = {}
    for way, server in setup.servers.items():
        if server.log_file is None or not server.log_file.exists():
            continue
        text = server.log_file.read_text(errors="replace")
        found[way] = sum(1 for line in text.splitlines() if OUTBOUND_PATTERNS.search(line))
    return found


def analytics_rows(server: Server, expected: int) -> int | None:
    """Rows in the analytics database once the writer has caught up (up to 15 s), None without one."""
    if server.analytics_db is None:
        return None
    rows = -1
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(f"file:{server.analytics_db}?mode=ro", uri=True, timeout=5) as db:
                rows = int(db.execute("SELECT COUNT(*) FROM llm_calls").fetchone()[0])
        except sqlite3.Error:
            pass
        if rows >= expected:
            break
        time.sleep(0.5)
    return rows if rows >= 0 else None


def run_llm_bench(
    rounds: int = ROUNDS,
    duration: float = DURATION,
    ttft_requests: int = TTFT_REQUESTS,
    sut_cpu: int | None = None,
    load_cpu: int | None = None,
    code: Path | None = None,
    logs: Path | None = None,
    ways: tuple[str, ...] = WAYS,
    connections: int = CONNECTIONS,
) -> LlmResults:
    """Install LiteLLM Proxy if needed, start the fake provider (load CPU) and the gateways (SUT
    CPU), measure, stop them all by PID. ``code``: the directory Kairos is run from (a copy of the
    kairos and admin packages, as bench/run.py makes); None takes such a copy of the working tree."""
    default_sut, default_load = cpus()
    sut_cpu = default_sut if sut_cpu is None else sut_cpu
    load_cpu = default_load if load_cpu is None else load_cpu
    os.sched_setaffinity(0, {load_cpu})
    results = LlmResults(rounds, duration, connections, ttft_requests, WORDS)
    info = results.info
    info["load_start"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    info["gateway_versions"] = gateway_versions()
    info["wrk"] = wrk_version()
    if "litellm-proxy" in ways:
        try:
            info.update(ensure_litellm_proxy(litellm_version()))
        except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
            results.errors["install litellm-proxy"] = f"{type(exc).__name__}: {exc}"
            ways = tuple(way for way in ways if way != "litellm-proxy")
    with ExitStack() as stack:
        try:
            if code is None:
                code = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kairos-bench-code-")))
                info["code"] = snapshot_kairos(code)
            else:
                info["code"] = str(code)
            log(f"llm: starting {', '.join(ways)} (kairos code: {info['code']})")
            with serving(ways, sut_cpu, load_cpu, code, logs, results) as setup:
                if "direct" not in setup.servers:
                    raise RuntimeError("the fake provider does not answer as expected")
                rss = {way: rss_kib(server) for way, server in setup.servers.items() if server.process}
                for way in setup.servers:
                    warm_up(setup, results, way)
                deadline = time.monotonic() + RUN_SECONDS
                last = 0.0
                for round_no in range(1, rounds + 1):
                    if time.monotonic() + last > deadline:
                        results.errors["time"] = (
                            f"stopped after {round_no - 1} rounds: {RUN_SECONDS:g} s bound"
                        )
                        break
                    began = time.monotonic()
                    measure_round(setup, results, round_no)
                    last = time.monotonic() - began
                    log(f"llm: round {round_no} took {last:.0f} s")
                for way, server in setup.servers.items():
                    if server.process is not None:
                        info[f"rss {way}"] = f"{rss[way] / 1024:.0f} -> {rss_kib(server) / 1024:.0f} MiB"
                analytics = setup.servers.get("kairos-analytics")
                if analytics is not None:
                    calls = setup.calls.get("kairos-analytics", 0)
                    rows = analytics_rows(analytics, calls)
                    info["analytics"] = f"{rows} records in SQLite for {calls} provider calls"
                signs = log_signs(setup)
                info["log_signs"] = ", ".join(f"{way} {count}" for way, count in signs.items())
                for way, count in signs.items():
                    if count:
                        results.errors[f"outbound {way}"] = f"{count} log lines look like an outbound attempt"
        except (RuntimeError, ValueError, KeyError, OSError, subprocess.SubprocessError) as exc:
            results.errors["setup"] = f"{type(exc).__name__}: {exc}"
    info["load_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return results


def rss_kib(server: Server) -> int:
    total = 0
    for pid in server.pids():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


# -- summaries ---------------------------------------------------------------------------------------


def valid(cell: Run) -> bool:
    """A run counts when every request answered 200 and reached the provider."""
    return cell.errors == 0 and cell.requests > 0 and cell.provider_calls >= cell.requests


def run_of(results: LlmResults, round_no: int, way: str, kind: str, connections: int) -> Run | None:
    for cell in results.runs:
        if (cell.round, cell.way, cell.kind, cell.connections) == (round_no, way, kind, connections):
            return cell if valid(cell) else None
    return None


def ttft_of(results: LlmResults, round_no: int, way: str) -> Ttft | None:
    for cell in results.ttfts:
        if (cell.round, cell.way) == (round_no, way):
            return cell
    return None


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def cpu_us(cell: Run) -> float:
    """The gateway's CPU per request, µs: all it spent on the run's calls over their number."""
    return (cell.drained_cpu or 0.0) * 1e6 / max(cell.provider_calls, 1)


def run_median(
    results: LlmResults, way: str, kind: str, connections: int, value: Callable[[Run], float | None]
) -> float | None:
    found = []
    for cell in results.runs:
        if (cell.way, cell.kind, cell.connections) == (way, kind, connections) and valid(cell):
            number = value(cell)
            if number is not None:
                found.append(number)
    return median(found)


def per_round(results: LlmResults, compute: Callable[[int], float | None]) -> list[float]:
    values = []
    for round_no in range(1, results.rounds + 1):
        value = compute(round_no)
        if value is not None:
            values.append(value)
    return values


def added(results: LlmResults, way: str, kind: str) -> list[float]:
    """``way``'s p50 at c=1 minus direct's, ms, per round."""

    def compute(round_no: int) -> float | None:
        cell, direct = run_of(results, round_no, way, kind, 1), run_of(results, round_no, "direct", kind, 1)
        return cell.p50_ms - direct.p50_ms if cell and direct else None

    return per_round(results, compute)


def latency_shares(results: LlmResults, kind: str) -> list[float]:
    """Kairos's added p50 over LiteLLM Proxy's, per round."""

    def compute(round_no: int) -> float | None:
        kairos = run_of(results, round_no, "kairos", kind, 1)
        proxy = run_of(results, round_no, "litellm-proxy", kind, 1)
        direct = run_of(results, round_no, "direct", kind, 1)
        if not (kairos and proxy and direct) or proxy.p50_ms <= direct.p50_ms:
            return None
        return (kairos.p50_ms - direct.p50_ms) / (proxy.p50_ms - direct.p50_ms)

    return per_round(results, compute)


def ratios(
    results: LlmResults, way: str, other: str, kind: str, value: Callable[[Run], float]
) -> list[float]:
    """value(way) / value(other) at c=C, per round."""

    def compute(round_no: int) -> float | None:
        cell = run_of(results, round_no, way, kind, results.connections)
        base = run_of(results, round_no, other, kind, results.connections)
        return value(cell) / value(base) if cell and base and value(base) else None

    return per_round(results, compute)


def ttft_added(results: LlmResults, way: str) -> list[float]:
    def compute(round_no: int) -> float | None:
        cell, direct = ttft_of(results, round_no, way), ttft_of(results, round_no, "direct")
        return cell.p50_ms - direct.p50_ms if cell and direct else None

    return per_round(results, compute)


def ttft_median(results: LlmResults, way: str, value: Callable[[Ttft], float]) -> float | None:
    return median([value(cell) for cell in results.ttfts if cell.way == way])


def mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def listing(values: list[float], pattern: str) -> str:
    return ", ".join(pattern.format(value) for value in values)


def headline_lines(results: LlmResults | None) -> list[str]:
    """The goals, ✓ or ✗, with their figures."""
    if results is None or not results.runs:
        failure = "; ".join(results.errors.values()) if results else "not run"
        return [f"- LLM routes (Kairos vs LiteLLM Proxy): n/a ({_short(failure)})"]
    lines = []
    for kind in KINDS:
        shares = latency_shares(results, kind)
        kairos, proxy = median(added(results, "kairos", kind)), median(added(results, "litellm-proxy", kind))
        if shares:
            share = statistics.median(shares)
            lines.append(
                f"- {mark(share <= GOAL_LATENCY_SHARE)} **LLM {KIND_LABELS[kind]}: Kairos adds "
                f"{fmt(kairos, '{:.2f}')} ms p50 at c=1, {share:.2f}x what LiteLLM Proxy adds "
                f"({fmt(proxy, '{:.2f}')} ms)** (goal ≤ {GOAL_LATENCY_SHARE:g}x; per round: "
                f"{listing(shares, '{:.2f}')})"
            )
        else:
            lines.append(f"- ✗ LLM {KIND_LABELS[kind]} added latency: n/a (goal ≤ {GOAL_LATENCY_SHARE:g}x)")
    for kind in KINDS:
        values = ratios(results, "kairos", "litellm-proxy", kind, lambda cell: cell.rps)
        cpu = median(ratios(results, "litellm-proxy", "kairos", kind, cpu_us))
        if values:
            ratio = statistics.median(values)
            lines.append(
                f"- {mark(ratio >= GOAL_THROUGHPUT)} **LLM {KIND_LABELS[kind]} at c={results.connections}: "
                f"Kairos {ratio:.2f}x LiteLLM Proxy's requests/s** (goal ≥ {GOAL_THROUGHPUT:g}x; by CPU per "
                f"request {fmt(cpu, '{:.2f}x')}; per round: {listing(values, '{:.2f}')})"
            )
        else:
            lines.append(f"- ✗ LLM {KIND_LABELS[kind]} throughput: n/a (goal ≥ {GOAL_THROUGHPUT:g}x)")
    values = ttft_added(results, "kairos")
    if values:
        value = statistics.median(values)
        proxy = median(ttft_added(results, "litellm-proxy"))
        lines.append(
            f"- {mark(value <= GOAL_TTFT_MS)} **LLM time to first token: Kairos adds {value:+.2f} ms p50** "
            f"(goal ≤ {GOAL_TTFT_MS:g} ms; LiteLLM Proxy adds {fmt(proxy, '{:+.2f}')} ms; per round: "
            f"{listing(values, '{:+.2f}')})"
        )
    else:
        lines.append(f"- ✗ LLM time to first token: n/a (goal ≤ {GOAL_TTFT_MS:g} ms added)")
    sdk = []
    for kind in KINDS:
        extra = median(added(results, "kairos-litellm", kind))
        rps = median(ratios(results, "kairos-litellm", "litellm-proxy", kind, lambda cell: cell.rps))
        if extra is not None or rps is not None:
            sdk.append(
                f"{KIND_LABELS[kind]} {fmt(extra, '{:+.2f}')} ms at c=1, {fmt(rps, '{:.2f}x')} LiteLLM "
                f"Proxy's requests/s at c={results.connections}"
            )
    if sdk:
        lines.append(f'- LLM, Kairos with `"transport": "litellm"` (reported, no goal): {"; ".join(sdk)}')
    return lines


def kind_table(results: LlmResults, kind: str) -> list[str]:
    c = results.connections
    lines = [
        f"| {KIND_LABELS[kind]} | p50 c=1 | p99 c=1 | added p50 c=1 | req/s c={c} | p50 c={c} "
        f"| SUT CPU per request c={c} | SUT core busy c={c} | provider core busy c={c} |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for way in WAYS:
        if not any(cell.way == way and cell.kind == kind for cell in results.runs):
            continue
        sut = way != "direct"

        def at(connections: int, value: Callable[[Run], float | None], way: str = way) -> float | None:
            return run_median(results, way, kind, connections, value)

        added_p50 = median(added(results, way, kind)) if sut else None
        sut_busy = at(c, lambda cell: (cell.sut_cpu or 0.0) / cell.seconds * 100) if sut else None
        lines.append(
            f"| {LABELS[way]} | {fmt(at(1, lambda cell: cell.p50_ms), '{:.2f} ms')} "
            f"| {fmt(at(1, lambda cell: cell.p99_ms), '{:.2f} ms')} "
            f"| {fmt(added_p50, '{:+.2f} ms')} "
            f"| {fmt(at(c, lambda cell: cell.rps), '{:,.0f}')} "
            f"| {fmt(at(c, lambda cell: cell.p50_ms), '{:.1f} ms')} "
            f"| {fmt(at(c, cpu_us) if sut else None, '{:,.0f} µs')} "
            f"| {fmt(sut_busy, '{:.0f}%')} "
            f"| {fmt(at(c, lambda cell: cell.provider_cpu / cell.seconds * 100), '{:.0f}%')} |"
        )
    return lines


def report_lines(results: LlmResults) -> list[str]:
    if not results.runs:
        return [f"LLM benchmark FAILED: {_short('; '.join(results.errors.values()))}"]
    info = results.info
    c = results.connections
    events = ", ".join(f"{LABELS[way]} {check.get('events', '?')}" for way, check in results.checks.items())
    proxy_server = "uvicorn"
    if "httptools -" in info.get("proxy_versions", ""):
        proxy_server = "uvicorn with h11: httptools is not among its dependencies"
    lines = [
        f"Chat completions of {results.words} words (`max_tokens`; streamed: one SSE event per word, "
        f"`data:` events per stream with `[DONE]`: {events}) from a fake OpenAI-compatible provider "
        "(tests/servers/fake_llm.py, aiohttp, echo model) on the load CPU, directly and through each gateway "
        "alone on the SUT CPU (taskset, one process, one worker); wrk (`-t1`, a Lua script POSTing the "
        f"JSON body) on the load CPU, {results.duration:g} s per run at c=1 and c={c} per kind; time to "
        f"first token: {results.ttft_requests} sequential streams per way and round from httpx (one "
        "keep-alive connection), to the first `data:` line. "
        f"{results.rounds} round{'s' if results.rounds != 1 else ''}, the ways' order rotated; medians "
        "across rounds, ratios and differences within a round. Requests/s: wrk's (completed over the run's "
        "time, the ramp to C requests in flight included). CPU per request: the gateway's utime+stime "
        "(/proc, all threads) from a run's start until it is idle again, over the calls that reached the "
        "provider. Every run's requests were checked to answer 200 and reach the provider (its call "
        "counter).",
        "",
        f"Versions: Kairos code {info.get('code', '?')} with {info.get('gateway_versions', '?')}; LiteLLM "
        f"Proxy in bench/.venv-litellm-proxy: {info.get('proxy_versions', 'not installed')} (installed as "
        f"{info.get('installed', '?')}), `litellm --config config.yaml --num_workers 1` ({proxy_server}), "
        "a master key, no database, `LITELLM_LOG=ERROR`, `LITELLM_LOCAL_MODEL_COST_MAP=True`, "
        f"`LITELLM_TELEMETRY=False`; Kairos `python -m kairos run`, `KAIROS_ANALYTICS=false` except the "
        f"analytics row; {info.get('wrk', 'wrk')}. Load average at start {info.get('load_start', '?')}, at "
        f"end {info.get('load_end', '?')}: the machine is shared (other people's tests and benchmarks run "
        "on both CPUs), so every figure is noisy: medians.",
        "",
        *kind_table(results, "chat"),
        "",
        *kind_table(results, "stream"),
        "",
        "| time to first token | p50 | p90 | p99 | added p50 | whole stream p50 |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for way in WAYS:
        if not any(cell.way == way for cell in results.ttfts):
            continue
        extra = median(ttft_added(results, way)) if way != "direct" else None
        lines.append(
            f"| {LABELS[way]} | {fmt(ttft_median(results, way, lambda cell: cell.p50_ms), '{:.2f} ms')} "
            f"| {fmt(ttft_median(results, way, lambda cell: cell.p90_ms), '{:.2f} ms')} "
            f"| {fmt(ttft_median(results, way, lambda cell: cell.p99_ms), '{:.2f} ms')} "
            f"| {fmt(extra, '{:+.2f} ms')} "
            f"| {fmt(ttft_median(results, way, lambda cell: cell.whole_p50_ms), '{:.2f} ms')} |"
        )
    bound = sorted(
        {
            f"{LABELS[cell.way]} {cell.kind}"
            for cell in results.runs
            if cell.connections == c and cell.provider_cpu + cell.wrk_cpu >= BUSY * cell.seconds
        }
    )
    if bound:
        lines += [
            "",
            f"The load CPU (provider + wrk) was ≥ {BUSY:.0%} busy at c={c} for {', '.join(bound)}: "
            "those requests/s are the load side's limit, not the gateway's (compare CPU per request).",
        ]
    left_out = [cell for cell in results.runs if not valid(cell)]
    if left_out:
        lines += [
            "",
            "Runs left out (an error, or fewer provider calls than requests): "
            + ", ".join(f"round {x.round} {x.way} {x.kind} c={x.connections}" for x in left_out),
        ]
    idle = max((cell.idle_cpu / cell.seconds for cell in results.runs), default=0.0)
    lines += ["", f"The idle gateways used at most {idle:.1%} of a core while another was measured."]
    analytics_cost = []
    for kind in KINDS:
        values = ratios(results, "kairos-analytics", "kairos", kind, lambda cell: cell.rps)
        deltas = [
            value for n in range(1, results.rounds + 1) if (value := _cpu_delta(results, n, kind)) is not None
        ]
        if values:
            analytics_cost.append(
                f"{KIND_LABELS[kind]} {statistics.median(values):.2f}x Kairos's requests/s, "
                f"{fmt(median(deltas), '{:+,.0f}')} µs CPU per request"
            )
    if analytics_cost:
        lines += [
            "",
            f"Analytics on (SQLite, one record per call written in batches): {'; '.join(analytics_cost)}; "
            f"{info.get('analytics', '')}.",
        ]
    lines += ["", "Per round, requests/s at c=C and p50 at c=1:", ""]
    for way in WAYS:
        for kind in KINDS:
            cells = []
            for round_no in range(1, results.rounds + 1):
                load = run_of(results, round_no, way, kind, c)
                one = run_of(results, round_no, way, kind, 1)
                rps = fmt(load.rps if load else None, "{:,.0f}")
                cells.append(f"{rps} ({fmt(one.p50_ms if one else None, '{:.2f} ms')})")
            if any(cell.way == way and cell.kind == kind for cell in results.runs):
                lines.append(f"- {LABELS[way]}, {KIND_LABELS[kind]}: {'; '.join(cells)}")
    rss = [f"{LABELS[key[4:]]} {value}" for key, value in info.items() if key.startswith("rss ")]
    lines += [
        "",
        f"RSS at the start and the end: {'; '.join(rss)}. Outbound check: every gateway's sockets after "
        "every run (peers other than loopback) and its log (failed lookups, fetches, telemetry): "
        f"{'none seen' if not any(key.startswith('outbound') for key in results.errors) else 'SEE BELOW'} "
        f"(log lines matched: {info.get('log_signs', '?')}).",
        "",
        *headline_lines(results),
    ]
    if results.errors:
        lines += ["", *(f"- {name} FAILED: {_short(error)}" for name, error in results.errors.items())]
    return lines


def _cpu_delta(results: LlmResults, round_no: int, kind: str) -> float | None:
    with_analytics = run_of(results, round_no, "kairos-analytics", kind, results.connections)
    without = run_of(results, round_no, "kairos", kind, results.connections)
    return cpu_us(with_analytics) - cpu_us(without) if with_analytics and without else None


def _short(text: str) -> str:
    return (text or "unknown error").replace("|", "/").replace("\n", " ")[:300]


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM/SIGHUP (run.py stopping this child) become SystemExit so ``finally`` stops the servers."""
    raise SystemExit(128 + signum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="interleaved rounds (1..20)")
    parser.add_argument("--duration", type=float, default=DURATION, help="seconds per wrk run (1..60)")
    parser.add_argument(
        "--ttft-requests", type=int, default=TTFT_REQUESTS, help="streams per way and round (20..2,000)"
    )
    parser.add_argument("--connections", type=int, default=CONNECTIONS, help="wrk -c of the throughput runs")
    parser.add_argument(
        "--ways", default=",".join(WAYS), help=f"a subset of {','.join(WAYS)} (direct always)"
    )
    parser.add_argument("--sut-cpu", type=int, help="CPU of the gateways")
    parser.add_argument("--load-cpu", type=int, help="CPU of wrk, the fake provider and this script")
    parser.add_argument("--code", type=Path, help="run the kairos package from here (default: a fresh copy)")
    parser.add_argument("--logs", type=Path, help="keep the servers' logs and wrk's output here")
    parser.add_argument("--json", action="store_true", help="machine-readable output (for run.py)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    ways = tuple(way for way in WAYS if way == "direct" or way in args.ways.split(","))
    unknown = set(args.ways.split(",")) - set(WAYS)
    if unknown:
        parser.error(f"--ways: unknown {', '.join(sorted(unknown))}")
    if not (
        1 <= args.rounds <= 20
        and 1 <= args.duration <= 60
        and 20 <= args.ttft_requests <= 2_000
        and 2 <= args.connections <= 500
    ):
        parser.error(
            "--rounds 1..20, --duration 1..60, --ttft-requests 20..2,000, --connections 2..500 "
            "(every loop stays bounded)"
        )
    if shutil.which("wrk") is None:
        sys.exit("bench/llm_bench.py needs wrk (apt-get install wrk)")
    if args.logs is not None:
        args.logs.mkdir(parents=True, exist_ok=True)
    results = run_llm_bench(
        args.rounds,
        args.duration,
        args.ttft_requests,
        args.sut_cpu,
        args.load_cpu,
        args.code,
        args.logs,
        ways,
        args.connections,
    )
    if args.json:
        print(json.dumps(asdict(results)))
        return
    print("\n".join(report_lines(results)))


if __name__ == "__main__":
    main()
