"""``kairos top`` run as an operator runs it: ``python -m kairos top`` on a pseudo-terminal (its
stdin, stdout and controlling terminal, so ``q`` and Ctrl-C are real keystrokes) against a real
gateway and upstream; and off a terminal, where it prints plain frames."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.processes import ROOT, Server, backend, free_port, gateway_server, route, stop

TOKEN = "a-top-test-admin-token-0123456789abcdef"
ROUTE = "/top/{id}"
ROWS, COLUMNS = 40, 150
# CSI (cursor moves, colours, modes), OSC (titles), and the two-byte escapes.
ESCAPES = re.compile(
    rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[=>78]"
)
ALT_SCREEN_OFF = b"\x1b[?1049l"
CURSOR_SHOWN = b"\x1b[?25h"


def _env(**extra: str) -> dict[str, str]:
    """The test runner's environment without anything that would steer the command: KAIROS_*
    settings, and the size overrides rich would read instead of the terminal's."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("KAIROS_") and key not in ("COLUMNS", "LINES", "NO_COLOR", "TERM")
    }
    return {**env, "TERM": "xterm-256color", **extra}


def kairos(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """The command off a terminal: stdin empty, stdout and stderr pipes."""
    return subprocess.run(
        [sys.executable, "-m", "kairos", *args],
        cwd=ROOT,
        env=env or _env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _controlling_terminal() -> None:
    """In the child, after setsid: make its stdin (the pty slave) its controlling terminal, so the
    line discipline turns a written ^C into SIGINT for it, as a real terminal does."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """``kairos top ARGS`` with a pseudo-terminal of ROWS x COLUMNS as stdin, stdout, stderr and
    controlling terminal; everything it writes is kept in ``raw``."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        self.mode = termios.tcgetattr(self.slave)
        self.raw = bytearray()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kairos", "top", *args],
            cwd=ROOT,
            env=env or _env(),
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            start_new_session=True,
            preexec_fn=_controlling_terminal,
        )

    @property
    def text(self) -> str:
        """What was written, escape sequences removed (the frames one after the other)."""
        return ESCAPES.sub(b"", bytes(self.raw)).replace(b"\r", b"").decode("utf-8", "replace")

    def _pump(self, timeout: float) -> None:
        ready, _, _ = select.select([self.master], [], [], max(timeout, 0))
        if ready:
            self.raw += os.read(self.master, 65536)

    def expect(self, check: Callable[[str], bool], what: str, timeout: float = 20) -> str:
        """Read until ``check(text)`` holds; fail with the screen so far after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not check(self.text):
            if self.process.poll() is not None:
                self._pump(0)
                if check(self.text):
                    break
                raise AssertionError(f"exited {self.process.returncode} before {what}:\n{self.text[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout}s; screen so far:\n{self.text[-4000:]}")
            self._pump(min(0.2, deadline - time.monotonic()))
        return self.text

    def press(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def wait(self, timeout: float) -> int:
        """The exit code, reading the output meanwhile (a full pty buffer would block the child)."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"still running {timeout}s later:\n{self.text[-4000:]}")
            self._pump(0.1)
        while select.select([self.master], [], [], 0)[0]:
            chunk = os.read(self.master, 65536)
            if not chunk:
                break
            self.raw += chunk
        return self.process.returncode

    def restored(self) -> bool:
        """The terminal is back in the mode it had before: line editing and echo on."""
        mode = termios.tcgetattr(self.slave)
        return mode[3] == self.mode[3] and bool(mode[3] & termios.ICANON) and bool(mode[3] & termios.ECHO)

    def close(self) -> None:
        stop(self.process)  # by PID: terminate, then kill after a grace period
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def terminal() -> Iterator[Callable[..., Terminal]]:
    started: list[Terminal] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Terminal:
        started.append(Terminal(*args, env=env))
        return started[-1]

    try:
        yield start
    finally:
        for one in started:
            one.close()


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, upstream: Server) -> Iterator[Server]:
    config = {"version": 1, "routers": [route(ROUTE, "/echo/{id}", [backend(upstream)])]}
    with gateway_server(module_tmp, config) as server:
        yield server


@pytest.fixture(scope="module")
def guarded(module_tmp: Path, upstream: Server) -> Iterator[Server]:
    """A gateway whose admin API wants TOKEN."""
    config = {"version": 1, "routers": [route(ROUTE, "/echo/{id}", [backend(upstream)])]}
    with gateway_server(module_tmp, config, env={"KAIROS_ADMIN_TOKEN": TOKEN}) as server:
        yield server


def traffic(server: Server, count: int) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for number in range(count):
            assert http.get(f"/top/{number}").status_code == 200


def rows(text: str) -> list[tuple[str, int]]:
    """(REQ/S, REQUESTS) of the route's row in every frame drawn so far."""
    found = re.findall(r"/top/\{id\}\s+(-|\d+\.\d)\s+(\d+)\s", text)
    return [(rate, int(requests)) for rate, requests in found]


def test_on_a_terminal_it_shows_routes_and_backends_live_and_q_quits(
    gateway: Server, upstream: Server, terminal: Callable[..., Terminal]
) -> None:
    traffic(gateway, 3)
    top = terminal("--url", gateway.url, "--interval", "0.5")
    key = f"http://127.0.0.1:{upstream.port}"
    screen = top.expect(lambda text: "refresh 2 " in text, "second refresh")
    assert ROUTE in screen
    assert key in screen
    assert "in flight" in screen and "(whole gateway)" in screen
    assert b"\x1b[?1049h" in top.raw  # the alternate screen, as htop takes it

    traffic(gateway, 20)  # between two refreshes: the next frames show it as a rate
    top.expect(
        lambda text: (
            any(rate not in ("-", "0.0") for rate, _ in rows(text))
            and max(requests for _, requests in rows(text)) >= 23
        ),
        "the new requests as a rate",
    )

    top.press(b"q")
    assert top.wait(5) == 0
    assert top.raw.rfind(ALT_SCREEN_OFF) > top.raw.rfind(b"\x1b[?1049h")  # the shell's screen is back
    assert CURSOR_SHOWN in top.raw[top.raw.rfind(b"\x1b[?25l") :]
    assert top.restored()
    assert "Traceback" not in top.text


def test_ctrl_c_quits_cleanly_with_0(gateway: Server, terminal: Callable[..., Terminal]) -> None:
    top = terminal("--url", gateway.url)
    top.expect(lambda text: "refresh 1 " in text, "first refresh")
    top.press(b"\x03")  # the terminal sends SIGINT to its foreground process group
    assert top.wait(5) == 0
    assert top.raw.rfind(ALT_SCREEN_OFF) > top.raw.rfind(b"\x1b[?1049h")
    assert top.restored()
    assert "Traceback" not in top.text and "KeyboardInterrupt" not in top.text


def test_off_a_terminal_it_prints_one_plain_frame_per_refresh(gateway: Server, upstream: Server) -> None:
    traffic(gateway, 2)
    result = kairos("top", "--url", gateway.url, "--iterations", "2", "--interval", "0.2")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "\x1b" not in result.stdout
    frames = result.stdout.split("== kairos top  ")[1:]
    assert len(frames) == 2
    assert frames[0].startswith("refresh 1 every 0.2s") and frames[1].startswith("refresh 2 every 0.2s")
    for frame in frames:
        assert "ROUTE\tREQ/S\tREQUESTS\tP50 MS\tP99 MS\t5XX\t5XX %" in frame
        assert re.search(r"^/top/\{id\}\t(-|\d+\.\d)\t\d+\t", frame, re.MULTILINE)
        assert re.search(
            rf"^http://127\.0\.0\.1:{upstream.port}\tyes\tclosed\t\d+\tno\tyes$", frame, re.MULTILINE
        )


def test_a_refused_token_exits_2_naming_the_setting(guarded: Server) -> None:
    result = kairos("top", "--url", guarded.url, "--token", "not-the-token", "--iterations", "1")
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: the admin token was refused") and "KAIROS_ADMIN_TOKEN" in line

    # The right token from KAIROS_ADMIN_TOKEN reaches the admin API and the stream alike.
    result = kairos("top", "--url", guarded.url, "--iterations", "1", env=_env(KAIROS_ADMIN_TOKEN=TOKEN))
    assert result.returncode == 0, result.stderr
    assert ROUTE in result.stdout


def test_a_gateway_that_is_down_exits_2_in_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = kairos("top", "--url", url, "--iterations", "1")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"error: cannot reach the gateway at {url}: connection refused"
    ]


def test_an_interval_the_stream_refuses_is_refused_before_connecting() -> None:
    result = kairos("top", "--url", f"http://127.0.0.1:{free_port()}", "--interval", "0.01")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --interval must be between 0.1 and 3600 seconds (got 0.01)"


def test_sigterm_quits_cleanly_with_0(gateway: Server, terminal: Callable[..., Terminal]) -> None:
    """``kill PID`` (a service manager, a closed tmux pane's parent) ends it like q: screen and
    terminal mode restored, exit 0."""
    top = terminal("--url", gateway.url)
    top.expect(lambda text: "refresh 1 " in text, "first refresh")
    os.kill(top.process.pid, signal.SIGTERM)
    assert top.wait(5) == 0
    assert top.restored()
