"""Per-backend circuit breaker, pure logic: closed -> open -> half-open -> closed.

One ``CircuitBreaker`` lives in each ``BackendState`` (so it is shared by every route that uses the
backend and survives config reloads); the ``CircuitBreakerConfig`` of the route making the call is
passed to every method that needs it, so a reload that changes thresholds applies at once. Time is
whatever clock the caller passes (``time.monotonic()`` in the gateway, a plain float in tests).

- **Closed**: outcomes are counted. By default ``failure_threshold`` consecutive failures open the
  circuit (a success resets the count). With ``failure_rate_threshold`` set, the ratio mode
  replaces the count: the circuit opens when, over the last ``window_ms``, at least
  ``minimum_requests`` outcomes were seen and the failed share reached the threshold. The window
  is ten time buckets, so memory is bounded whatever the traffic.
- **Open**: every call is refused (``blocks``) until ``reset_timeout_ms`` after it opened.
- **Half-open**: reached lazily by the first call after that time. At most
  ``half_open_max_calls`` probes run at a time (kairos-rs let every call through, §3.9);
  ``success_threshold`` successful probes close the circuit, one failed probe re-opens it for
  another ``reset_timeout_ms``.

Outcomes of calls that started before the circuit changed state (a slow request that was sent
while closed and ends while open, a probe of an earlier half-open period) are ignored: each probe
carries the ``epoch`` it was admitted in, and the epoch moves on every open and close.

A breaker whose routes say ``"shared": true`` gets a ``shared`` view (kairos/resilience/
shared_breaker.py: the replicas' common state in Redis, cached for a moment). While that view is
usable the questions (``blocks``, ``retry_after``, ``state_at``) are answered from it, so the
balancer, /metrics and the admin API see what every replica sees; while Redis is unreachable this
breaker's own state answers, as if it were not shared.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from kairos.config.policies import CircuitBreakerConfig
    from kairos.resilience.shared_breaker import SharedCircuit

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"

# Metric values of the states (kairos_circuit_breaker_state).
STATE_VALUE: Final = {CLOSED: 0, OPEN: 1, HALF_OPEN: 2}

_BUCKETS = 10


class FailureWindow:
    """Outcome counts over a sliding time window, in ``_BUCKETS`` buckets (so the window is
    ``window`` seconds long to within one bucket)."""

    __slots__ = ("_buckets", "failures", "length", "total", "width")

    def __init__(self, window: float) -> None:
        self.length = window
        self.width = window / _BUCKETS
        self._buckets: deque[list[int]] = deque()  # [bucket index, total, failures], oldest first
        self.total = 0
        self.failures = 0

    def add(self, now: float, failed: bool) -> None:
        index = int(now / self.width)
        self.expire(now)
        buckets = self._buckets
        if buckets and buckets[-1][0] == index:
            bucket = buckets[-1]
        else:
            bucket = [index, 0, 0]
            buckets.append(bucket)
        bucket[1] += 1
        self.total += 1
        if failed:
            bucket[2] += 1
            self.failures += 1

    def expire(self, now: float) -> None:
        oldest = int(now / self.width) - _BUCKETS + 1
        buckets = self._buckets
        while buckets and buckets[0][0] < oldest:
            _, total, failures = buckets.popleft()
            self.total -= total
            self.failures -= failures


class CircuitFields:
    """The questions a circuit's fields answer (its state, probe time and probe slots): asked of
    this replica's ``CircuitBreaker`` and of the replicas' common state in Redis
    (``kairos.resilience.shared_breaker.SharedCircuit``) alike. The subclasses hold the fields."""

    __slots__ = ()

    state: str
    probe_at: float
    probes: int
    max_probes: int

    def blocks(self, now: float) -> bool:
        """Whether a call now must not reach the backend: open and before probe time, or half-open
        (or due to become so) with every probe slot taken."""
        state = self.state
        if state is CLOSED:
            return False
        if state is OPEN and now < self.probe_at:
            return True
        return self.probes >= self.max_probes

    def retry_after(self, now: float) -> float:
        """Seconds until a probe is allowed (0 once probe time is reached, even if the probe slots
        are taken: when they free up cannot be known)."""
        if self.state is OPEN and now < self.probe_at:
            return self.probe_at - now
        return 0.0

    def state_at(self, now: float) -> str:
        """The state as an observer sees it: an open circuit past its probe time is half-open."""
        if self.state is OPEN and now >= self.probe_at:
            return HALF_OPEN
        return self.state


class CircuitBreaker(CircuitFields):
    __slots__ = (
        "_window",
        "epoch",
        "failures",
        "max_probes",
        "opened",
        "probe_at",
        "probes",
        "shared",
        "state",
        "successes",
    )

    def __init__(self) -> None:
        self.state: str = CLOSED
        self.failures = 0  # consecutive failures while closed (count mode)
        self.successes = 0  # successful probes in this half-open period
        self.probe_at = 0.0  # when open: the time from which a probe may go through
        self.probes = 0  # probes in flight (half-open)
        self.max_probes = 1  # half_open_max_calls of the config that opened the circuit
        self.epoch = 0  # moves on every open and close; probes carry the epoch they were admitted in
        self.opened = 0  # times the circuit opened (a counter for /metrics)
        self._window: FailureWindow | None = None
        self.shared: SharedCircuit | None = None  # the replicas' common state, when shared

    # -- questions -------------------------------------------------------------------------------

    def blocks(self, now: float) -> bool:
        shared = self.shared
        if shared is not None and shared.usable():
            return shared.blocks(now)
        return super().blocks(now)

    def retry_after(self, now: float) -> float:
        shared = self.shared
        if shared is not None and shared.usable():
            return shared.retry_after(now)
        return super().retry_after(now)

    def state_at(self, now: float) -> str:
        shared = self.shared
        if shared is not None and shared.usable():
            return shared.state_at(now)
        return super().state_at(now)

    # -- a call's life ---------------------------------------------------------------------------

    def acquire(self, config: CircuitBreakerConfig, now: float) -> int | None:
        """Admit a call that ``blocks(now)`` let through. Returns None for a normal call (closed),
        or the probe's ticket when the call is a half-open probe: pass it to ``record`` or, if the
        call ends without an outcome, to ``release``, so the probe slot is given back."""
        state = self.state
        if state is CLOSED:
            return None
        if state is OPEN:  # probe time reached: this call is the first probe
            self.state = HALF_OPEN
            self.successes = 0
            self.probes = 0
            self.max_probes = config.half_open_max_calls
        self.probes += 1
        return self.epoch

    def release(self, ticket: int | None) -> None:
        """A call ended without an outcome (the client left): give its probe slot back."""
        if ticket is not None and ticket == self.epoch and self.state is HALF_OPEN and self.probes > 0:
            self.probes -= 1

    def record(
        self, config: CircuitBreakerConfig, failed: bool, now: float, ticket: int | None = None
    ) -> None:
        """The outcome of a call admitted by ``acquire`` (``ticket`` is what it returned)."""
        state = self.state
        if state is CLOSED:
            if ticket is None:
                self._closed_outcome(config, failed, now)
            return
        if ticket is None or ticket != self.epoch or state is not HALF_OPEN:
            return  # a call from before the circuit opened, or a probe of an earlier period
        self.probes -= 1
        if failed:
            self._open(config, now)
        else:
            self.successes += 1
            if self.successes >= config.success_threshold:
                self._close()

    def reset(self) -> None:
        """Back to closed with clean counts (e.g. the breaker was switched off)."""
        self._close()

    def hold_open(self, until: float, max_probes: int) -> None:
        """Open a closed breaker until ``until`` without counting an opening: a shared breaker whose
        replicas' state said open when Redis became unreachable keeps refusing here rather than
        sending to a backend every replica had given up on."""
        if self.state is not CLOSED:
            return
        self.state = OPEN
        self.probe_at = until
        self.max_probes = max_probes
        self.failures = 0
        self.successes = 0
        self.probes = 0
        self.epoch += 1
        self._window = None

    # -- transitions -----------------------------------------------------------------------------

    def _closed_outcome(self, config: CircuitBreakerConfig, failed: bool, now: float) -> None:
        rate = config.failure_rate_threshold
        if rate is None:
            if not failed:
                self.failures = 0
                return
            self.failures += 1
            if self.failures >= config.failure_threshold:
                self._open(config, now)
            return
        window = self._window
        width = config.window_ms / 1000
        if window is None or window.length != width:
            window = self._window = FailureWindow(width)
        window.add(now, failed)
        if failed and window.total >= config.minimum_requests and window.failures >= rate * window.total:
            self._open(config, now)

    def _open(self, config: CircuitBreakerConfig, now: float) -> None:
        self.state = OPEN
        self.probe_at = now + config.reset_timeout_ms / 1000
        self.max_probes = config.half_open_max_calls
        self.failures = 0
        self.successes = 0
        self.probes = 0
        self.epoch += 1
        self.opened += 1
        self._window = None

    def _close(self) -> None:
        if self.state is not CLOSED:
            self.epoch += 1
        self.state = CLOSED
        self.failures = 0
        self.successes = 0
        self.probes = 0
        self._window = None
