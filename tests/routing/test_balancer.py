"""Load-balancing strategies, exercised on routes compiled from config, plus the in-flight counting
middleware that least_connections reads."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence

import pytest
from starlette.types import Message, Receive, Scope, Send

from kairos.exchange import SCOPE_KEY, Exchange
from kairos.middleware.balancer import BalancerMiddleware
from kairos.routing.backend import Backend, BackendState
from kairos.routing.balancer import ConsistentIpHash, WeightedRandom
from kairos.routing.route import Route
from tests.processes import ROOT
from tests.routing.util import compile_all, route_configs, router, single_route

PORTS = (9001, 9002, 9003, 9004)


def make_route(strategy: str, weights: Sequence[int], ports: Sequence[int] = PORTS) -> Route:
    return single_route(ports=ports[: len(weights)], weights=list(weights), load_balancing_strategy=strategy)


def picks(
    route: Route, count: int, client_ip: str = "127.0.0.1", candidates: Sequence[Backend] | None = None
) -> str:
    chosen = candidates if candidates is not None else route.backends
    return "".join("abcd"[route.balancer.pick(chosen, client_ip).index] for _ in range(count))


def ip(n: int) -> str:
    return f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


# -- round robin -----------------------------------------------------------------------------------


def test_round_robin_alternates_exactly() -> None:
    assert picks(make_route("round_robin", [1, 1]), 10) == "ab" * 5
    assert picks(make_route("round_robin", [5, 1, 1]), 9) == "abc" * 3  # weights are ignored


def test_round_robin_is_per_route() -> None:
    first, second = make_route("round_robin", [1, 1]), make_route("round_robin", [1, 1])
    assert picks(first, 3) == "aba"
    assert picks(second, 1) == "a"


# -- weighted (smooth weighted round robin) ------------------------------------------------------------


def test_weighted_5_1_1_is_interleaved() -> None:
    route = make_route("weighted", [5, 1, 1])
    sequence = picks(route, 7 * 50)
    assert sequence[:7] == "aabacaa"
    for cycle in range(50):
        window = sequence[cycle * 7 : cycle * 7 + 7]
        assert window == "aabacaa"
        assert Counter(window) == {"a": 5, "b": 1, "c": 1}
    assert "aaaaa" not in sequence


def test_weighted_2_1_is_exact_over_3000_picks() -> None:
    sequence = picks(make_route("weighted", [2, 1]), 3000)
    assert Counter(sequence) == {"a": 2000, "b": 1000}
    for start in range(0, 3000, 3):
        assert Counter(sequence[start : start + 3]) == {"a": 2, "b": 1}
    assert "aaa" not in sequence and "bb" not in sequence


def test_weighted_exact_per_cycle_for_uneven_weights() -> None:
    weights = [7, 3, 2, 1]
    sequence = picks(make_route("weighted", weights), 13 * 20)
    for start in range(0, len(sequence), 13):
        assert Counter(sequence[start : start + 13]) == dict(zip("abcd", weights, strict=True))
    longest_a_run = max(
        len(run) for run in sequence.replace("b", " ").replace("c", " ").replace("d", " ").split()
    )
    assert longest_a_run <= 3


def test_weighted_equal_weights_is_round_robin() -> None:
    assert picks(make_route("weighted", [4, 4, 4]), 9) == "abc" * 3


def test_weighted_follows_a_changed_candidate_set() -> None:
    route = make_route("weighted", [2, 1, 1])
    picks(route, 5)
    only_bc = [backend for backend in route.backends if backend.index != 0]
    assert Counter(picks(route, 40, candidates=only_bc)) == {"b": 20, "c": 20}


# -- least connections -----------------------------------------------------------------------------


def test_least_connections_rotates_when_all_idle() -> None:
    assert picks(make_route("least_connections", [1, 1, 1]), 9) == "abc" * 3


def test_least_connections_reads_in_flight_counts() -> None:
    route = make_route("least_connections", [1, 1, 1])
    a, b, c = route.backends
    a.state.in_flight, b.state.in_flight, c.state.in_flight = 3, 0, 1
    assert picks(route, 5) == "bbbbb"
    b.state.in_flight = 5
    assert picks(route, 3) == "ccc"


def test_least_connections_ties_share_evenly() -> None:
    route = make_route("least_connections", [1, 1, 1])
    route.backends[0].state.in_flight = 2  # a busy: b and c tie and must alternate
    sequence = picks(route, 100)
    assert Counter(sequence) == {"b": 50, "c": 50}
    assert "bb" not in sequence and "cc" not in sequence


def test_least_connections_counts_are_shared_by_routes_using_the_same_backend() -> None:
    states: dict[str, BackendState] = {}
    first, second = compile_all(
        route_configs(
            [
                router("/one", ports=(9001, 9002), load_balancing_strategy="least_connections"),
                router("/two", ports=(9001, 9002), load_balancing_strategy="least_connections"),
            ]
        ),
        states,
    )
    assert first.backends[0].state is second.backends[0].state
    first.backends[0].state.in_flight = 1
    assert picks(second, 4) == "bbbb"


async def no_receive() -> Message:
    raise AssertionError("the balancer reads no message")


async def no_send(message: Message) -> None:
    raise AssertionError("the balancer sends no message")


def test_balancer_middleware_holds_the_in_flight_count_for_the_whole_exchange() -> None:
    route = make_route("least_connections", [1, 1])
    seen: list[tuple[int, int, int]] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        exchange: Exchange = scope[SCOPE_KEY]
        assert exchange.backend is not None
        seen.append(
            (exchange.backend.index, route.backends[0].state.in_flight, route.backends[1].state.in_flight)
        )
        if scope["path"] == "/boom":
            raise RuntimeError("boom")
        if scope["path"] == "/nested":
            await middleware(new_scope("/leaf"), receive, send)

    middleware = BalancerMiddleware(inner)

    def new_scope(path: str) -> Scope:
        exchange = Exchange(request_id="r", client_ip="127.0.0.1", started=0.0, route=route)
        return {"type": "http", "path": path, SCOPE_KEY: exchange}

    async def main() -> None:
        await middleware(new_scope("/nested"), no_receive, no_send)
        with pytest.raises(RuntimeError):
            await middleware(new_scope("/boom"), no_receive, no_send)

    asyncio.run(main())
    # nested: the outer request holds a (1, 0), so the inner one goes to b and sees both counted
    assert seen[0] == (0, 1, 0)
    assert seen[1] == (1, 1, 1)
    assert seen[2][1] + seen[2][2] == 1  # the failing request was counted...
    assert [backend.state.in_flight for backend in route.backends] == [0, 0]  # ...and released


def test_balancer_middleware_honours_preferred_backend() -> None:
    route = make_route("round_robin", [1, 1, 1])
    chosen: list[int] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        backend = scope[SCOPE_KEY].backend
        chosen.append(backend.index)

    async def main() -> None:
        for preferred in (2, 2, None, 7):
            exchange = Exchange(request_id="r", client_ip="1.2.3.4", started=0.0, route=route)
            exchange.preferred_backend = preferred
            await BalancerMiddleware(inner)({"type": "http", SCOPE_KEY: exchange}, no_receive, no_send)

    asyncio.run(main())
    assert chosen == [2, 2, 0, 1]  # out-of-range preference falls back to the strategy


# -- random (weighted) -------------------------------------------------------------------------------

# chi-square critical value for 3 degrees of freedom at p = 1e-9: a correct implementation fails
# this once in a billion runs; a wrong weighting (e.g. uniform) exceeds it by orders of magnitude.
CHI2_DF3_P1E9 = 46.0


def chi_square(counts: Counter[str], weights: Sequence[int], total: int) -> float:
    weight_sum = sum(weights)
    return sum(
        (counts.get(letter, 0) - total * weight / weight_sum) ** 2 / (total * weight / weight_sum)
        for letter, weight in zip("abcd", weights, strict=True)
    )


def test_random_is_weighted_with_seeded_generators() -> None:
    weights = [1, 2, 3, 4]
    route = make_route("random", weights)
    balancer = route.balancer
    assert isinstance(balancer, WeightedRandom)
    for seed in range(5):
        balancer._random = random.Random(seed)  # deterministic sample
        counts = Counter(picks(route, 20_000))
        assert chi_square(counts, weights, 20_000) < CHI2_DF3_P1E9
        for letter, weight in zip("abcd", weights, strict=True):
            assert abs(counts[letter] / 20_000 - weight / 10) < 0.02


def test_random_unseeded_stays_within_a_one_in_a_billion_bound() -> None:
    weights = [1, 2, 3, 4]
    counts = Counter(picks(make_route("random", weights), 20_000))
    assert chi_square(counts, weights, 20_000) < CHI2_DF3_P1E9
    uniform = chi_square(counts, [1, 1, 1, 1], 20_000)
    assert uniform > 1000  # it is not ignoring the weights


def test_random_with_one_candidate() -> None:
    route = make_route("random", [3])
    assert picks(route, 5) == "aaaaa"


# -- ip hash (weighted rendezvous) ----------------------------------------------------------------------


def test_ip_hash_same_ip_same_backend_always() -> None:
    route = make_route("ip_hash", [1, 1, 1])
    again = make_route("ip_hash", [1, 1, 1])
    for n in range(500):
        first = route.balancer.pick(route.backends, ip(n)).index
        assert all(route.balancer.pick(route.backends, ip(n)).index == first for _ in range(3))
        assert again.balancer.pick(again.backends, ip(n)).index == first  # a new instance agrees
    for address in ("::1", "2001:db8::7", "192.168.0.1"):
        first = route.balancer.pick(route.backends, address).index
        assert route.balancer.pick(route.backends, address).index == first


def test_ip_hash_spreads_clients_and_respects_weights() -> None:
    even = make_route("ip_hash", [1, 1, 1])
    counts = Counter(even.balancer.pick(even.backends, ip(n)).index for n in range(10_000))
    assert all(2800 < counts[index] < 3900 for index in range(3)), counts
    weighted = make_route("ip_hash", [3, 1])
    counts = Counter(weighted.balancer.pick(weighted.backends, ip(n)).index for n in range(10_000))
    assert 0.70 < counts[0] / 10_000 < 0.80, counts


def test_ip_hash_adding_a_backend_moves_about_a_quarter_all_to_the_new_one() -> None:
    three = make_route("ip_hash", [1, 1, 1])
    four = make_route("ip_hash", [1, 1, 1, 1])
    assert [b.key for b in four.backends[:3]] == [b.key for b in three.backends]
    moved = 0
    for n in range(10_000):
        before = three.balancer.pick(three.backends, ip(n)).index
        after = four.balancer.pick(four.backends, ip(n)).index
        if before != after:
            moved += 1
            assert after == 3, f"{ip(n)} moved from {before} to an old backend {after}"
    assert 1500 <= moved <= 3500, moved


def test_ip_hash_removing_a_backend_only_moves_its_clients() -> None:
    route = make_route("ip_hash", [1, 1, 1, 1])
    remaining = [backend for backend in route.backends if backend.index != 1]
    for n in range(5000):
        before = route.balancer.pick(route.backends, ip(n)).index
        after = route.balancer.pick(remaining, ip(n)).index
        if before != 1:
            assert after == before


def test_ip_hash_identity_is_the_backend_address_not_its_position() -> None:
    forward = make_route("ip_hash", [1, 1, 1], ports=(9001, 9002, 9003))
    backward = make_route("ip_hash", [1, 1, 1], ports=(9003, 9002, 9001))
    for n in range(1000):
        assert (
            forward.balancer.pick(forward.backends, ip(n)).port
            == backward.balancer.pick(backward.backends, ip(n)).port
        )


_SUBPROCESS = """
import json, sys
from tests.routing.test_balancer import ip, make_route
route = make_route("ip_hash", [1, 2, 1, 3])
print(json.dumps([route.balancer.pick(route.backends, ip(n)).index for n in range(2000)]))
"""


def test_ip_hash_is_deterministic_across_processes() -> None:
    route = make_route("ip_hash", [1, 2, 1, 3])
    assert isinstance(route.balancer, ConsistentIpHash)
    local = [route.balancer.pick(route.backends, ip(n)).index for n in range(2000)]
    for hash_seed in ("1", "12345"):
        result = subprocess.run(
            [sys.executable, "-c", _SUBPROCESS],
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            check=True,
            timeout=60,
        )
        assert json.loads(result.stdout) == local
    assert set(local) == {0, 1, 2, 3}
