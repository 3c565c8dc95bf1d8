"""The fast tier stays pure: while a test of tests/unit sets up, runs or tears down, starting a
subprocess, starting Ray or loading the embedded model fails it with a message that says to
move it to tests/integration (tests/helpers.py: purity_guard). Without this, one impure test
would quietly slow `make test-fast` back towards the whole suite's time."""

from __future__ import annotations

import platform

import pytest

from tests.helpers import ImpureUnitTest, purity_guard

# The standard library runs `uname -p` in a subprocess the first time anything asks for the
# processor (the openai client does, for its request headers) and caches the answer for the
# process: asked once here, before any guard, no test pays for it or is blamed for it.
platform.processor()

# Likewise matplotlib: on a machine where it has never run, the first plot builds its font
# cache, and that runs `fc-list` in a subprocess. Built here once (a no-op where the cache
# exists), so a fresh clone's `make test-fast` does not fail the first report test for it.
import matplotlib.font_manager  # noqa: E402, F401


def _pure(item):
    if item.get_closest_marker("integration"):
        return (yield)
    with purity_guard() as seen:
        try:
            result = yield
        except ImpureUnitTest:
            raise
        except BaseException as error:
            # The refusal was caught and turned into another failure (or a skip): say why.
            if seen:
                raise ImpureUnitTest(seen[0]) from error
            raise
    if seen:  # caught and swallowed by the code under test
        raise ImpureUnitTest(seen[0])
    return result


# Setup and teardown as well as the call: a module-scoped fixture that runs the CLI is as impure.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    return (yield from _pure(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from _pure(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    return (yield from _pure(item))
