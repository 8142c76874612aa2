"""The skip ledger, enforced: a test that skips without an entry in tests/SKIPS.md fails the run.

Registered by tests/conftest.py (``pytest_plugins``).  Every skipped test of the session (skipped at collection,
in setup or in the call; an expected failure is not a skip) is matched against the patterns in the first
column of SKIPS.md's table (text in backticks):

- ``tests/test_browser.py``: a whole file (every test in it, and the file itself when it skips at import);
- ``tests/test_kernels.py::*_gpu``: fnmatch on the node id, with or without its parameters (``[...]``);
- ``test_build_from_each_family[hf]``: a pattern without a file matches the test's own name in any file.

``[`` and ``]`` in a pattern are literal (parameter ids), ``*`` and ``?`` are wildcards.  After the run, skips
that match no pattern are printed with their reasons and the exit status becomes 1.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

LEDGER = Path(__file__).with_name("SKIPS.md")


def ledger_patterns(text: str) -> list[str]:
    """The backticked patterns of the first column of every table row of SKIPS.md's text."""
    patterns = []
    for line in text.splitlines():
        cells = line.strip().split("|")
        if len(cells) < 3 or set(cells[1].strip()) <= set("-: "):  # not a table row, or the separator
            continue
        patterns += re.findall(r"`([^`]+)`", cells[1])
    return patterns


def _match(name: str, pattern: str) -> bool:
    return fnmatchcase(name, pattern.replace("[", "[[]"))  # brackets are parameter ids, not character sets


def is_listed(nodeid: str, patterns: list[str]) -> bool:
    """Whether the skip of ``nodeid`` (a test, or a test file skipped at collection) is allowed by a pattern."""
    path, _, rest = nodeid.partition("::")
    names = {nodeid, nodeid.split("[", 1)[0]}
    last = rest.rsplit("::", 1)[-1]
    for p in patterns:
        if "::" not in p and p.endswith(".py"):
            if _match(path, p):
                return True
        elif "/" not in p and "::" not in p:
            if rest and (_match(last, p) or _match(last.split("[", 1)[0], p)):
                return True
        elif any(_match(n, p) for n in names):
            return True
    return False


class SkipLedger:
    def __init__(self, ledger: Path = LEDGER):
        self.ledger = ledger
        self.skipped: dict[str, str] = {}  # node id -> reason

    def _note(self, report) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.skipped.setdefault(report.nodeid, reason.removeprefix("Skipped: "))

    def pytest_runtest_logreport(self, report) -> None:
        self._note(report)

    def pytest_collectreport(self, report) -> None:
        self._note(report)

    def unlisted(self) -> dict[str, str]:
        patterns = ledger_patterns(self.ledger.read_text(encoding="utf-8"))
        return {n: r for n, r in self.skipped.items() if not is_listed(n, patterns)}

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session) -> None:
        if self.unlisted() and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        bad = self.unlisted()
        if not bad:
            return
        terminalreporter.section("skips not listed in tests/SKIPS.md", sep="=", red=True, bold=True)
        for nodeid, reason in bad.items():
            terminalreporter.line(f"{nodeid}: skipped ({reason})", red=True)
        terminalreporter.line(f"{len(bad)} unlisted skip(s): fix what makes them skip, or add a row with the reason "
                              f"to {self.ledger} (a skip not listed there is a failure to investigate)")


def pytest_configure(config) -> None:
    config.pluginmanager.register(SkipLedger(), "atlas-skip-ledger")
