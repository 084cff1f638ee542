"""One way for a test to say that something it needs is missing (the real data, a declared dependency, PostgreSQL's
binaries, the browser), so that no run passes quietly as a clean run of fewer tests.

Under CI (``CI=true``) the test fails. Elsewhere it is skipped with a reason that starts with :data:`PREFIX`, and the
run ends with one line counting those tests by what they missed (``not_run_line``, printed by tests/conftest.py).
"""

from __future__ import annotations

import os
from collections import Counter
from typing import NoReturn

import pytest

PREFIX = "not run, missing "


def missing(what: str, detail: str) -> NoReturn:
    """Fail (CI) or skip the calling test because ``what`` (a short name: "real data", "torch") is missing;
    ``detail`` says where it was looked for and how to get it."""
    message = f"{PREFIX}{what}: {detail}"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _reason(report) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


def not_run_line(skipped_reports) -> str | None:
    """The run's last line when tests were skipped for something missing: how many, what they missed and where it
    was looked for (None when nothing was missing)."""
    missed: Counter = Counter()
    details: dict[str, str] = {}
    for report in skipped_reports:
        reason = _reason(report)
        if reason.startswith(PREFIX):
            what, _, detail = reason[len(PREFIX) :].partition(": ")
            missed[what] += 1
            details.setdefault(what, detail)
    if not missed:
        return None
    total = sum(missed.values())
    parts = "; ".join(f"{n} for {what}: {details[what]}" for what, n in missed.most_common())
    return (
        f"NOT RUN: {total} test{'s' if total != 1 else ''} did not run because something they need is missing "
        f"({parts}); under CI=true each is a failure"
    )
