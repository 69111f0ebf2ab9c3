"""The dashboard in a real headless Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright;
Playwright's own browser downloads are not used).

``browser``: one Chromium for the module. ``tabs``: opens a fresh context (and its page) per call,
each one watched: any request to a host other than 127.0.0.1/localhost is aborted and recorded, and
console errors and uncaught page errors are collected; the test ends with ``tab.assert_clean()``
(the fixture checks it again after a passing test that forgot). A CSP violation is a console error, so a
clean console also means the page loaded nothing the policy refuses.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Route, sync_playwright

CALL_PASSED = pytest.StashKey[bool]()

CHROMIUM = os.environ.get("KAIROS_CHROMIUM", "/usr/bin/chromium")
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})


@dataclass
class Tab:
    """A page in a context of its own, and what it did that a test must not see."""

    context: BrowserContext
    page: Page
    foreign: list[str] = field(default_factory=list)  # requests to another host (aborted)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    # Console errors a test provoked on purpose (e.g. Chromium logs a page answered 401 or 400).
    expected: list[re.Pattern[str]] = field(default_factory=list)
    checked: bool = False

    def expect_console_error(self, pattern: str) -> None:
        self.expected.append(re.compile(pattern))

    def unexpected_console_errors(self) -> list[str]:
        return [text for text in self.console_errors if not any(p.search(text) for p in self.expected)]

    def assert_clean(self) -> None:
        self.checked = True
        assert self.foreign == [], f"the page reached for another host: {self.foreign}"
        assert self.unexpected_console_errors() == [], f"console errors: {self.console_errors}"
        assert self.page_errors == [], f"uncaught page errors: {self.page_errors}"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Records whether the test itself passed, so ``tabs`` checks its pages only then (a failed
    test already says what went wrong)."""
    report: pytest.TestReport = yield
    if report.when == "call":
        item.stash[CALL_PASSED] = report.passed
    return report


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        raise RuntimeError(
            f"no Chromium at {CHROMIUM}: run `make system-deps` (it installs Debian's chromium)"
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def tabs(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Callable[..., Tab]]:
    """``tabs(**context_options)`` → a watched Tab in a fresh context; all closed after the test."""
    opened: list[Tab] = []

    def open_tab(**options: Any) -> Tab:
        options.setdefault("viewport", {"width": 1280, "height": 800})
        context = browser.new_context(**options)
        context.set_default_timeout(15_000)
        context.set_default_navigation_timeout(20_000)
        page = context.new_page()
        tab = Tab(context, page)

        def guard(route: Route) -> None:
            host = urlsplit(route.request.url).hostname or ""
            if host in LOCAL_HOSTS:
                route.continue_()
            else:
                tab.foreign.append(route.request.url)
                route.abort()

        def console(message: ConsoleMessage) -> None:
            if message.type == "error":
                tab.console_errors.append(f"{message.text} ({message.location.get('url', '')})")

        context.route("**/*", guard)
        page.on("console", console)
        page.on("pageerror", lambda error: tab.page_errors.append(str(error)))
        opened.append(tab)
        return tab

    try:
        yield open_tab
    finally:
        for tab in opened:
            tab.context.close()
    if request.node.stash.get(CALL_PASSED, False):
        for tab in opened:
            if not tab.checked:
                tab.assert_clean()
