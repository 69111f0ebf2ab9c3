"""Issue 19: an LLM route never downloads anything at run time (tokenizers and prices are bundled).

tests/llm/offline_scenario.py runs whole inside a fresh, empty network namespace (``unshare --net``):
the fake provider and the real gateway on the namespace's own loopback, no route anywhere else, the
gateway with an empty home and cache and none of the HF_*, TIKTOKEN_*, LITELLM_* or proxy variables.
It makes chat, streamed chat, text completion and embeddings calls on both transports, for models
whose prices (OpenAI chat and embeddings) and tokenizers (Llama 2 and 3, from huggingface.co) litellm
could fetch, with limits on (every prompt counted and priced first) and the Llama models answering
without usage (every answer counted too). This test checks what it printed: every call answered,
each well under the ~23 s a tokenizer download spends retrying offline; analytics written; the
namespace's counters saw no attempt to leave the loopback (checked to see one first); the gateway's
log says nothing of a failed fetch.

Needs a new network namespace: root (or CAP_SYS_ADMIN), or unprivileged user namespaces for
``unshare --user --map-root-user --net``; skipped, saying which, where neither is allowed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.llm.offline_scenario import CALLS
from tests.processes import ROOT

# s to /ready. Startup is CPU-bound (litellm's import is ~5 s idle, 10 s on 2 CPUs shared with a CI run:
# 9.8-18.6 s to /ready measured so), hence generous; a download tried at startup fails the counters'
# check whatever it costs in time.
STARTUP_BOUND = 45.0
CALL_BOUND = 5.0  # s per call; a tokenizer download retried offline took ~23 s
SCENARIO_DEADLINE = 75  # s, the scenario's own (it stops its processes and reports)
SUBPROCESS_TIMEOUT = 90  # s, then it is killed and so are the processes it had started

# What litellm, huggingface_hub, tiktoken (requests) and httpx log when a fetch fails or is retried.
FORBIDDEN = re.compile(
    r"Traceback|huggingface|hf-internal-testing|Xenova|Failed to fetch|Falling back to tiktoken|"
    r"Retrying in|urlopen|name resolution|Network is unreachable|Max retries exceeded|openaipublic|"
    r"cost map|beta headers config|ConnectError",
    re.IGNORECASE,
)
EXPECTED_REQUESTS = {"gpt": 1, "llama": 2, "embed": 1, "sdk-gpt": 1, "sdk-llama": 2, "sdk-embed": 1}
PRICED = ("gpt", "embed", "sdk-gpt", "sdk-embed")  # in litellm's bundled price list; the Llama names not
UNREPORTED = ("llama", "sdk-llama")  # the provider sends no usage: the gateway's estimate counts them


def namespace_prefix() -> list[str]:
    """The ``unshare`` command that gives a new network namespace here, or skip saying what is missing."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("`unshare` (util-linux) is not installed: no empty network namespace to run in")
    refused = []
    for prefix in ([unshare, "--net"], [unshare, "--user", "--map-root-user", "--net"]):
        probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=10)
        if probe.returncode == 0:
            return prefix
        refused.append(f"`{' '.join(prefix[1:])}`: {probe.stderr.strip() or probe.returncode}")
    pytest.skip(
        "a new network namespace is not permitted (needs root or CAP_SYS_ADMIN for `unshare --net`, or "
        "unprivileged user namespaces): " + "; ".join(refused)
    )


def stop_leftovers(pids: Path) -> None:
    """After a killed scenario: stop, by PID, the processes it had started and not stopped (checked
    to still be ours by their command line, so a reused PID is never signalled)."""
    if not pids.exists():
        return
    for line in pids.read_text().split():
        try:
            command = Path(f"/proc/{int(line)}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if b"tests.servers.fake_llm" in command or b"kairos" in command:
            os.kill(int(line), signal.SIGKILL)


def run_scenario(workdir: Path) -> tuple[dict[str, Any], str]:
    command = [
        *namespace_prefix(),
        sys.executable,
        "-m",
        "tests.llm.offline_scenario",
        "--workdir",
        str(workdir),
        "--deadline",
        str(SCENARIO_DEADLINE),
    ]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    except subprocess.TimeoutExpired as error:
        stop_leftovers(workdir / "pids")
        pytest.fail(f"the offline scenario did not finish within {SUBPROCESS_TIMEOUT} s: {error.stderr!r}")
    lines = done.stdout.strip().splitlines()
    assert lines, f"the scenario printed nothing (exit {done.returncode}): {done.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    log = Path(result["gateway_log"]).read_text(errors="replace") if "gateway_log" in result else ""
    return result, log


def test_llm_routes_work_in_an_empty_network_namespace(tmp_path: Path) -> None:
    result, log = run_scenario(tmp_path)
    context = json.dumps(result, indent=1)[-6000:]
    timings = {name: call.get("seconds") for name, call in result.get("calls", {}).items()}
    print(f"startup {result.get('startup_seconds')} s, calls {timings}, all {result.get('total_seconds')} s")
    assert result["ok"], f"{result.get('error')}\n{context}"
    assert result["netns"] != os.readlink("/proc/self/ns/net")
    assert result["interfaces"] == ["lo"]
    canary = result["canary"]  # the counters do see an attempt to leave, and a name lookup
    assert canary["connect"] == "ENETUNREACH" and canary["connect_seen"] >= 1, canary
    assert canary["lookup_seen"] >= 1, canary

    assert result["startup_seconds"] < STARTUP_BOUND, context
    calls = result["calls"]
    assert set(calls) == {name for name, _, _ in CALLS}
    for name, call in calls.items():
        assert call["status"] == 200, (name, call)
        assert call["seconds"] < CALL_BOUND, (name, call)
    for name in ("stream", "litellm_stream"):
        assert calls[name]["done"] and calls[name]["events"] >= 3, calls[name]
    assert calls["embeddings"]["items"] == 2 and calls["litellm_embeddings"]["items"] == 1

    analytics = result["analytics"]
    assert analytics["status"] == 200 and analytics["backend"] == "sqlite", analytics
    assert result["analytics_file"]
    rows = {row["key"]: row for row in analytics["rows"]}
    assert {key: row["requests"] for key, row in rows.items()} == EXPECTED_REQUESTS
    for row in rows.values():
        assert row["errors"] == 0 and row["prompt_tokens"] > 0, row
    for key in PRICED:
        assert rows[key]["cost_usd"] > 0, rows[key]
    for key in UNREPORTED:
        assert rows[key]["completion_tokens"] > 0, rows[key]

    assert result["network_attempts"] == {
        "ip_out_no_routes": 0,
        "udp_out_datagrams": 0,
        "ip6_out_no_routes": 0,
        "udp6_out_datagrams": 0,
    }, log[-4000:]
    assert "Kairos" in log and "started" in log
    assert [line for line in log.splitlines() if FORBIDDEN.search(line)] == []
    assert result["leftover_pids"] == []
