"""Programs the tests drive: skipped where missing, a failure under CI.

A test that needs a program (Chromium, nginx, node, redis-server 7) skips, with
the reason, on a machine without it. `.ci/run` installs every one of them and
sets CI=true; there a skip made here fails the test instead (the
`pytest_runtest_makereport` hook in tests/conftest.py), so CI cannot go green
while a suite quietly skipped. kubectl is not among them: Debian has no
package for it, so the one test that uses it (tests/integration/test_deploy.py) skips with
a plain `pytest.skip`, under CI too.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

# Every skip reason made here starts with this; the conftest hook looks for it.
MISSING = "missing binary: "
# Where Debian puts nginx, often not on a user's PATH.
SBIN = "/usr/sbin:/usr/local/sbin"


def under_ci() -> bool:
    """True where a missing binary is a failure: CI=true, as `.ci/run` sets it."""
    return os.environ.get("CI") == "true"


def find_binary(name: str) -> str | None:
    """`name` on PATH or in the sbin directories (an absolute path as it is); None if absent."""
    return shutil.which(name) or shutil.which(name, path=SBIN)


def skip_missing(reason: str) -> NoReturn:
    """Skip this test because a program is missing or unfit; under CI=true it fails."""
    pytest.skip(MISSING + reason)


def require_binary(name: str, install: str) -> str:
    """The path of `name`; skips the test (fails it under CI) when it is not installed."""
    found = find_binary(name)
    if found is None:
        skip_missing(f"{name} is not installed ({install})")
    return found


def needs_binary(name: str, install: str) -> pytest.MarkDecorator:
    """`require_binary` as a mark, for `pytestmark` or a test."""
    return pytest.mark.skipif(
        find_binary(name) is None, reason=f"{MISSING}{name} is not installed ({install})"
    )
