import base64
import json

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from linchpin_gateway.config import GatewayConfig
from linchpin_gateway.router import Router
from linchpin_gateway.service import Gateway
from linchpin_gateway.store import SQLiteStore
from linchpin_common.workers import InlineWorker


@pytest.fixture(autouse=True)
def no_process_left(request):
    """Kill any real process a test started and did not stop (a failed test);
    then fail the test if any real process printed a traceback while it ran.

    Processes of wider-scoped fixtures were started before this snapshot and
    are left to their own fixture; only what they printed during this test
    counts against it."""
    from tests.support import Process

    before = set(Process.running)
    # From here on Process.started holds what this test starts; those already
    # running (wider-scoped fixtures) are in offsets. Nothing older is kept:
    # a list over the whole session would hold every process's output.
    Process.started.clear()
    offsets = {proc: len(proc.output) for proc in Process.running if isinstance(proc, Process)}
    yield
    for proc in Process.running - before - Process.fixtures:
        proc.kill()
        Process.running.discard(proc)
    for proc in Process.started:
        offsets.setdefault(proc, 0)
    Process.started.clear()
    children_logged_failures(request, offsets)


from tests.logcheck import (children_logged_failures, logged_failures_fail_the_test,  # noqa: E402,F401 (fixtures)
                            pytest_configure)


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the tests of a module (starting one costs a second)."""
    from tests.browser_support import chromium

    with chromium() as b:
        yield b


@pytest.fixture
def shots(tmp_path):
    """A folder for a browser test's screenshots, under its temporary folder."""
    folder = tmp_path / "screenshots"
    folder.mkdir()
    return folder


@pytest.fixture
def make_gateway(tmp_path):
    """An in-memory gateway: real store and hashing, run inline; fake reactor."""
    made = []

    def make(**options):
        """``options`` are GatewayConfig fields, e.g. ``rest_limit=0``."""
        reactor = MemoryReactorClock()
        reactor.advance(1_800_000_000)
        store = SQLiteStore(reactor, str(tmp_path / f"gw{len(made)}"), worker=InlineWorker())
        gateway = Gateway(reactor, store, GatewayConfig(**options), hash_worker=InlineWorker())
        gateway.startService()
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        gateway.store.stop()


class HeldWorker:
    """A worker that runs its jobs only when told, like a busy thread pool."""

    def __init__(self):
        self.jobs = []  # (Deferred, fn, args), oldest first

    def start(self):
        pass

    def stop(self):
        pass

    def run(self, fn, *args):
        d = defer.Deferred()
        self.jobs.append((d, fn, args))
        return d

    def release(self):
        """Run every queued job in order, also those queued meanwhile."""
        while self.jobs:
            d, fn, args = self.jobs.pop(0)
            d.callback(fn(*args))


def basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


JSON = {"Content-Type": "application/json"}


def json_body(data):
    return json.dumps(data).encode()


@pytest.fixture
def clock():
    """A clock the test moves by hand."""
    return Clock()


@pytest.fixture
def router(clock):
    """A router alone, on that clock (no sockets, no other node)."""
    return Router(clock)

