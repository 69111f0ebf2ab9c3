"""An LLM route served with no network at all: run inside a fresh, empty network namespace.

    unshare --net python -m tests.llm.offline_scenario --workdir DIR

(tests/llm/test_offline.py runs it so and checks what it prints.) It refuses to run where any
interface but ``lo`` exists. Inside, it brings ``lo`` up (an ioctl, no ``ip`` needed), starts the fake
OpenAI-compatible provider (tests/servers/fake_llm.py) and the real gateway (``python -m kairos run``)
on 127.0.0.1, with two ``llm`` routes whose models are those litellm would fetch something for
(prices of an OpenAI chat and embeddings model, Llama tokenizers from huggingface.co), one route on the
direct transport (``auto``) and one on litellm's SDK, both with limits (so every request's prompt is
counted and priced before the call) and the Llama models answering without usage (so the answer is
counted too), analytics in SQLite. Then it makes chat, streamed chat, text completion and embeddings
calls on each, each timed, reads ``GET /api/analytics/llm``, stops both processes by PID and prints
one JSON line: what the test asserts on.

No download can succeed here; whether one was *tried* is read from the namespace's own counters
(``/proc/net/snmp``, ``/proc/net/snmp6``): ``OutNoRoutes`` counts every packet any process (Python,
litellm's native code, a C library) tried to send somewhere off the loopback, a DNS query included,
and UDP datagrams sent count lookups through a resolver on the loopback. That the counters see such
attempts is checked first (a connect to a TEST-NET address, a name lookup). The gateway starts with an
empty ``HOME``/cache and without the HF_*, TIKTOKEN_*, LITELLM_* and proxy variables, so a cached
tokenizer or an operator's setting cannot hide a download: what keeps it offline is Kairos's own doing.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from tests.processes import Server, free_port, kairos_run, server_process

KEY = "sk-kairos-offline-0123456789abcdef"
ADMIN = "offline-admin-token"
LLAMA3 = "meta-llama/Llama-3.1-8B-Instruct"  # litellm: the "llama3" tokenizer (Xenova/llama-3-tokenizer)
LLAMA2 = "meta-llama/Llama-2-7b-chat-hf"  # litellm: the "llama2" tokenizer (hf-internal-testing/...)
MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "How many tokens does a gateway add to a chat completion?"},
]
# Environment variables that could make litellm, tiktoken or huggingface_hub skip a download on their
# own (or send it through a proxy): the gateway runs without any of them.
SCRUBBED_PREFIXES = ("HF_", "HUGGINGFACE", "TRANSFORMERS_", "TIKTOKEN_", "CUSTOM_TIKTOKEN", "LITELLM_")
SCRUBBED = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy"}
STARTUP_DEADLINE = 60.0  # seconds for /ready; the test asserts a tighter bound on what is measured
REQUEST_TIMEOUT = 30.0  # a request hung on a download (~23 s) is measured, not cut short

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFREQ = "16sH14x"  # struct ifreq: the name, then ifr_flags (a short) in the 24-byte union


def interfaces() -> list[str]:
    return sorted(name for _, name in socket.if_nameindex())


def loopback_up() -> None:
    """``ip link set lo up``, by the ioctls ``ip`` uses (a new namespace's ``lo`` is down)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack(IFREQ, b"lo", 0)
        _, flags = struct.unpack(IFREQ, fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, request))
        fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, struct.pack(IFREQ, b"lo", flags | IFF_UP))


def outbound() -> dict[str, int]:
    """This namespace's counters of attempts to send off the loopback (and of UDP sent at all)."""
    counters: dict[str, int] = {}
    lines = Path("/proc/net/snmp").read_text().splitlines()
    for header, values in zip(lines[::2], lines[1::2], strict=False):
        kind, _, names = header.partition(":")
        table = dict(zip(names.split(), values.partition(":")[2].split(), strict=False))
        if kind == "Ip":
            counters["ip_out_no_routes"] = int(table["OutNoRoutes"])
        elif kind == "Udp":
            counters["udp_out_datagrams"] = int(table["OutDatagrams"])
    try:
        rows = dict(line.split() for line in Path("/proc/net/snmp6").read_text().splitlines() if line.strip())
    except OSError:  # IPv6 disabled: nothing to count there
        rows = {}
    counters["ip6_out_no_routes"] = int(rows.get("Ip6OutNoRoutes", 0))
    counters["udp6_out_datagrams"] = int(rows.get("Udp6OutDatagrams", 0))
    return counters


def attempts_since(before: dict[str, int]) -> dict[str, int]:
    now = outbound()
    return {name: now[name] - before.get(name, 0) for name in now}


def canary() -> dict[str, Any]:
    """Show that the counters see a connection attempt and a name lookup (the probe works here)."""
    before = outbound()
    started = time.monotonic()
    try:
        socket.create_connection(("192.0.2.1", 443), timeout=5).close()  # TEST-NET-1: never routable
        connect = "connected"
    except OSError as error:
        connect = errno.errorcode.get(error.errno or 0, str(error))
    connected = attempts_since(before)
    middle = outbound()
    try:
        socket.getaddrinfo("huggingface.co", 443)
        lookup = "resolved"
    except OSError as error:
        lookup = type(error).__name__
    looked_up = attempts_since(middle)
    return {
        "connect": connect,
        "connect_seen": sum(connected.values()),
        "lookup": lookup,
        "lookup_seen": sum(looked_up.values()),
        "seconds": round(time.monotonic() - started, 3),
    }


def clean_environment(workdir: Path) -> dict[str, str]:
    """Strip what could avoid or redirect a download, give an empty home and cache; what was removed."""
    removed = {}
    for name in list(os.environ):
        if name.startswith(SCRUBBED_PREFIXES) or name.lower() in SCRUBBED:
            removed[name] = os.environ.pop(name)
    home = workdir / "home"
    (home / ".cache").mkdir(parents=True, exist_ok=True)
    os.environ["HOME"] = str(home)
    os.environ["XDG_CACHE_HOME"] = str(home / ".cache")
    return {name: "<removed>" for name in removed}


def target(fake: Server, model: str, **extra: Any) -> dict[str, Any]:
    return {"provider": "openai", "model": model, "api_base": f"{fake.url}/v1", "api_key": KEY, **extra}


def config(fake: Server) -> dict[str, Any]:
    limits = {"tokens_per_minute": 1_000_000, "requests_per_minute": 1_000, "budget_usd_per_day": 100}

    def route(path: str, models: dict[str, Any]) -> dict[str, Any]:
        return {
            "protocol": "llm",
            "external_path": path,
            "internal_path": "/",
            "methods": ["GET", "POST"],
            "llm": {"models": models, "max_tokens": 64, "limits": limits},
        }

    sdk = {"transport": "litellm"}
    direct = route(
        "/v1",
        {
            "gpt": [target(fake, "gpt-4o-mini")],
            "llama": [target(fake, LLAMA3)],
            "embed": [target(fake, "text-embedding-3-small")],
        },
    )
    litellm = route(
        "/sdk",
        {
            "sdk-gpt": [target(fake, "gpt-4o-mini", **sdk)],
            "sdk-llama": [target(fake, LLAMA2, **sdk)],
            "sdk-embed": [target(fake, "text-embedding-3-small", **sdk)],
        },
    )
    return {"version": 1, "routers": [direct, litellm]}


def chat(model: str, max_tokens: int, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": MESSAGES, "max_tokens": max_tokens}
    return {**body, "stream": True} if stream else body


# name, path, body. The first is made right after /ready, while the tokenizers may still be warming.
CALLS: list[tuple[str, str, dict[str, Any]]] = [
    ("chat", "/v1/chat/completions", chat("gpt", 16)),
    ("stream", "/v1/chat/completions", chat("llama", 12, stream=True)),
    ("completion", "/v1/completions", {"model": "llama", "prompt": "Once upon a time", "max_tokens": 8}),
    ("embeddings", "/v1/embeddings", {"model": "embed", "input": ["a gateway", "an embedding"]}),
    ("litellm_chat", "/sdk/chat/completions", chat("sdk-gpt", 16)),
    ("litellm_llama_chat", "/sdk/chat/completions", chat("sdk-llama", 8)),
    ("litellm_stream", "/sdk/chat/completions", chat("sdk-llama", 12, stream=True)),
    ("litellm_embeddings", "/sdk/embeddings", {"model": "sdk-embed", "input": "one embedding"}),
]


def call(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    result: dict[str, Any] = {}
    try:
        if body.get("stream"):
            with client.stream("POST", path, json=body) as response:
                events = [line for line in response.iter_lines() if line.startswith("data: ")]
            result["events"] = len(events)
            result["done"] = bool(events) and events[-1] == "data: [DONE]"
        else:
            response = client.post(path, json=body)
            answer = response.json()
            result["usage"] = answer.get("usage") if isinstance(answer, dict) else None
            listed = answer.get("data") or answer.get("choices") if isinstance(answer, dict) else None
            result["items"] = len(listed or ())
        result["status"] = response.status_code
        result["served_by"] = response.headers.get("x-kairos-model")
    except httpx.HTTPError as error:
        result["status"] = None
        result["error"] = f"{type(error).__name__}: {error}"
    result["seconds"] = round(time.perf_counter() - started, 4)
    return result


def wait_ready(gateway: Server, deadline: float) -> float:
    """Seconds from now until ``/ready`` answers 200 (the lifespan, litellm's import included, done)."""
    started = time.monotonic()
    while time.monotonic() - started < deadline:
        if gateway.process.poll() is not None:
            raise RuntimeError(f"the gateway exited with {gateway.process.returncode}")
        try:
            if httpx.get(f"{gateway.url}/ready", timeout=1).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"/ready did not answer 200 within {deadline:.0f} s")


def analytics_rows(client: httpx.Client, expected: int, deadline: float = 15.0) -> dict[str, Any]:
    """``GET /api/analytics/llm?group_by=model`` once ``expected`` records are written (or the deadline)."""
    started = time.monotonic()
    found: dict[str, Any] = {}
    while time.monotonic() - started < deadline:
        answer = client.get(
            "/api/analytics/llm", params={"group_by": "model"}, headers={"authorization": f"Bearer {ADMIN}"}
        )
        found = {"status": answer.status_code}
        if answer.status_code == 200:
            body = answer.json()
            found.update(backend=body.get("backend"), written=body.get("written"), rows=body.get("rows"))
            if sum(row["requests"] for row in body.get("rows") or ()) >= expected:
                break
        time.sleep(0.2)
    found["seconds"] = round(time.monotonic() - started, 3)
    return found


def remember(pids: Path, server: Server) -> None:
    """Every PID started, for the test to stop should this process itself be killed."""
    with pids.open("a") as out:
        out.write(f"{server.pid}\n")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def scenario(workdir: Path, result: dict[str, Any]) -> None:
    result["netns"] = os.readlink("/proc/self/ns/net")
    result["interfaces"] = interfaces()
    if result["interfaces"] != ["lo"]:
        raise RuntimeError(f"not an empty network namespace ({result['interfaces']}): use unshare --net")
    loopback_up()
    result["canary"] = canary()
    result["scrubbed_environment"] = clean_environment(workdir)
    pids = workdir / "pids"
    started_pids: list[int] = []
    before = outbound()
    port = free_port()
    args = ["-m", "tests.servers.fake_llm", "--port", str(port)]
    with server_process(args, port, workdir / f"fake-llm-{port}.log") as fake:
        remember(pids, fake)
        started_pids.append(fake.pid)
        for model in (LLAMA3, LLAMA2):  # answers without usage: the gateway counts them itself
            httpx.post(f"{fake.url}/_control", json={"model": model, "omit_usage": True}).raise_for_status()
        env = {"KAIROS_ADMIN_TOKEN": ADMIN, "KAIROS_ANALYTICS": "true"}
        started = time.monotonic()
        with kairos_run(workdir, config(fake), env=env, wait=False) as gateway:
            remember(pids, gateway)
            started_pids.append(gateway.pid)
            result["gateway_log"] = str(gateway.log)
            result["startup_seconds"] = round(wait_ready(gateway, STARTUP_DEADLINE), 3)
            with httpx.Client(base_url=gateway.url, timeout=REQUEST_TIMEOUT) as client:
                result["calls"] = {name: call(client, path, body) for name, path, body in CALLS}
                result["analytics"] = analytics_rows(client, len(CALLS))
            result["serving_seconds"] = round(time.monotonic() - started, 3)
        log = gateway.output()
    result["analytics_file"] = (workdir / "kairos-analytics.db").exists()
    result["network_attempts"] = attempts_since(before)
    result["gateway_log_tail"] = log.splitlines()[-60:]
    result["leftover_pids"] = [pid for pid in started_pids if alive(pid)]


def _deadline(signum: int, frame: FrameType | None) -> None:
    raise TimeoutError("the scenario's own deadline passed")


def main() -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--deadline", type=int, default=75, help="seconds before giving up")
    options = parser.parse_args()
    options.workdir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGALRM, _deadline)
    signal.alarm(options.deadline)
    result: dict[str, Any] = {"ok": False}
    began = time.monotonic()
    try:
        scenario(options.workdir, result)
        result["ok"] = True
    except Exception as error:
        result["error"] = f"{type(error).__name__}: {error}"
    finally:
        signal.alarm(0)
    if "gateway_log" in result and "gateway_log_tail" not in result:  # failed midway: show why
        log = Path(result["gateway_log"]).read_text(errors="replace")
        result["gateway_log_tail"] = log.splitlines()[-60:]
    result["total_seconds"] = round(time.monotonic() - began, 3)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
