"""What each policy route costs inside the gateway pipeline alone: no server, no network.

The policy routes of ``make bench`` (bench/policies.py) are built into one gateway; the endpoint
that would call the upstream is replaced by a stub that answers 100 bytes, and each route is driven
by calling the pipeline directly. The figures are the pipeline's own CPU per request, free of
uvicorn, wrk and the upstream, so a change of a few µs shows (live, ``make bench`` sees it through
±8 points of noise). They are smaller than the live cost: headers a policy adds are also forwarded
upstream and parsed or checked by uvicorn.

Run: ``.venv/bin/python bench/inprocess.py [--layers] [ROUTE ...]`` (default: every route but the
Redis ones). ``--layers ROUTE`` puts the stub inside each layer in turn, so each layer's share of
that route's cost shows. Medians of 7 (5 with --layers) x 3,000 requests.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from policies import Scenario, _config, _tokens, scenarios  # noqa: E402
from procs import free_port, wait_ready  # noqa: E402

Message = dict[str, Any]
BODY = b"x" * 100


async def stub(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The upstream's answer, as the proxy endpoint would send it (nginx-like headers)."""
    headers = [(b"content-length", b"100"), (b"content-type", b"text/plain"), (b"server", b"nginx")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


async def drive(pipeline: Any, case: Scenario, token: str | None, count: int) -> float:
    """µs per request over ``count`` sequential requests to the case's route."""
    headers = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk")]
    if token:
        headers.append((b"authorization", b"Bearer " + token.encode()))
    path = f"/p/{case.name}"
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
    }  # fmt: skip

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        return None

    started = time.perf_counter()
    for _ in range(count):
        await pipeline(dict(scope), receive, send)
    return (time.perf_counter() - started) / count * 1e6


def layers_of(pipeline: Any) -> list[Any]:
    chain = []
    node = pipeline
    while hasattr(node, "app"):
        chain.append(node)
        node = node.app
    return chain


async def measure(args: argparse.Namespace, llm_port: int) -> None:
    from kairos.app import create_app
    from kairos.settings import Settings

    tokens = _tokens()
    cases = tuple(case for case in scenarios("redis://127.0.0.1:1") if "redis" not in case.name)
    wanted = args.routes or [case.name for case in cases]
    unknown = set(wanted) - {case.name for case in cases}
    if unknown:
        sys.exit(f"unknown route(s) {', '.join(sorted(unknown))}; known: {', '.join(c.name for c in cases)}")
    # Upstream port 9 (discard) is never dialled: the endpoint is replaced by the stub.
    app = create_app(_config(9, cases, tokens["public"], llm_port), Settings(config_watch=False))
    gateway = app.state.gateway
    await gateway.startup()
    try:
        chain = layers_of(app.pipeline)
        endpoints = [layer.app for layer in chain]
        selected = [case for case in cases if case.name in wanted]
        token = {case.name: tokens[case.token] if case.token else None for case in cases}
        if args.layers:
            case = selected[0]
            previous = 0.0
            for layer in chain:
                for index, node in enumerate(chain):
                    node.app = endpoints[index]
                layer.app = stub
                await drive(app.pipeline, case, token[case.name], 50)
                cost = statistics.median(
                    [await drive(app.pipeline, case, token[case.name], 3000) for _ in range(5)]
                )
                print(f"stub inside {type(layer).__name__:28s} {cost:6.1f} µs  (+{cost - previous:4.1f})")
                previous = cost
            return
        chain[-1].app = stub
        for case in selected:
            await drive(app.pipeline, case, token[case.name], 50)
        await asyncio.sleep(0.5)
        results: dict[str, list[float]] = {case.name: [] for case in selected}
        for _ in range(7):
            for case in selected:
                results[case.name].append(await drive(app.pipeline, case, token[case.name], 3000))
        plain = statistics.median(results["plain"]) if "plain" in results else None
        for name, values in results.items():
            cost = statistics.median(values)
            over = f"  ({cost - plain:+5.1f} vs plain)" if plain is not None and name != "plain" else ""
            print(f"{name:24s} {cost:6.1f} µs{over}")
    finally:
        await gateway.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", action="store_true", help="each layer's share of the first ROUTE")
    parser.add_argument("routes", nargs="*", help="policy routes (bench/policies.py names)")
    args = parser.parse_args()
    if args.layers and not args.routes:
        parser.error("--layers needs a ROUTE")
    port = free_port()
    llm = subprocess.Popen(
        [sys.executable, "-m", "tests.servers.fake_llm", "--port", str(port)],
        cwd=BENCH.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/_stats", llm, timeout=30)  # the AI route's first decision
        asyncio.run(measure(args, port))
    finally:
        llm.terminate()
        llm.wait(timeout=10)


if __name__ == "__main__":
    main()
