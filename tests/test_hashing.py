"""The PBKDF2 pool's queue: bounded in jobs and in expected wait.

A connect storm's refused clients come back after their back-off (1 s
doubling to 8 s); a queue that holds less work than that runs dry between
their waves and the pool idles while logins wait.  The jobs are held here
(tests/conftest.py's HeldWorker) and the measured duration of a job is set
by hand, so nothing depends on this machine's speed.
"""

from twisted.internet import defer
from twisted.internet.task import Clock

from linchpin_common.workers import cores
from linchpin_gateway import hashing
from linchpin_gateway.auth import Authenticator, LoginGuard
from linchpin_gateway.config import DEFAULTS
from linchpin_gateway.ratelimit import RateLimiter
from linchpin_gateway.router import DEVICE, Principal
from tests.conftest import HeldWorker

ID = "a" * 32


def queue(hasher, n):
    """Queue n checks; how many were refused at once."""
    refused = []
    for _ in range(n):
        hasher.verify("pw", None).addErrback(lambda f: refused.append(f.trap(hashing.Overloaded)))
    return len(refused)


def test_no_job_is_refused_while_the_expected_wait_is_short():
    # 1,000 checks of 20 ms on 2 threads: 10 s of work, less than the 15 s allowed
    hasher = hashing.Hasher(None, worker=HeldWorker(), threads=2)
    hasher.job_seconds = 0.020
    assert queue(hasher, 1000) == 0
    assert hasher.pending == 1000


def test_a_job_that_would_wait_too_long_is_refused_at_once():
    worker = HeldWorker()
    hasher = hashing.Hasher(None, worker=worker, max_pending=1000, max_wait=1.0, threads=2)
    hasher.job_seconds = 0.1  # 20 jobs on 2 threads: 1 s
    assert queue(hasher, 25) == 5
    assert hasher.pending == 20
    # a faster pool (as measured) takes more
    hasher.job_seconds = 0.05
    assert queue(hasher, 25) == 5
    assert hasher.pending == 40


def test_the_job_count_bound_still_holds():
    worker = HeldWorker()
    hasher = hashing.Hasher(None, worker=worker, max_pending=3, max_wait=100.0, threads=2)
    hasher.job_seconds = 0.001
    assert queue(hasher, 5) == 2
    d, fn, args = worker.jobs.pop(0)
    d.callback(fn(*args))
    assert hasher.pending == 2
    assert queue(hasher, 2) == 1  # room for one again


def test_until_a_job_was_timed_only_the_count_bound_applies_then_jobs_are_timed():
    worker = HeldWorker()
    hasher = hashing.Hasher(None, worker=worker, max_pending=4, max_wait=0.000001, threads=1)
    assert hasher.job_seconds is None
    assert queue(hasher, 6) == 2
    worker.release()
    assert hasher.job_seconds is not None and hasher.job_seconds > 0
    assert hasher.pending == 0
    # now measured: one PBKDF2 is far more than a microsecond
    assert queue(hasher, 1) == 1


def test_the_measured_duration_is_a_moving_average(monkeypatch):
    """One job's duration moves the estimate by a sixteenth of the
    difference: a storm's first jobs (an idle machine) or one slow job do
    not set the bound alone."""
    now = [0.0]
    monkeypatch.setattr(hashing.time, "perf_counter", lambda: now[0])
    worker = HeldWorker()
    hasher = hashing.Hasher(None, worker=worker, max_wait=None, threads=1)

    def job(seconds):
        now[0] += seconds

    def timed(*durations):
        for seconds in durations:
            hasher._run(job, seconds)
        worker.release()

    timed(1.0)
    assert hasher.job_seconds == 1.0  # the first measurement, as it is
    timed(3.0)
    assert hasher.job_seconds == 1.0 + 2.0 / 16
    timed(*[0.5] * 200)  # and a lasting change is followed
    assert abs(hasher.job_seconds - 0.5) < 0.001


def test_results_come_back_as_before():
    worker = HeldWorker()
    hasher = hashing.Hasher(None, worker=worker, threads=1)
    encoded = []
    hasher.hash("secret").addCallback(encoded.append)
    worker.release()
    ok = []
    hasher.verify("secret", encoded[0]).addCallback(ok.append)
    hasher.verify("wrong", encoded[0]).addCallback(ok.append)
    worker.release()
    assert ok == [True, False]


def test_the_pool_has_a_thread_per_core_by_default():
    hasher = hashing.Hasher(None)
    assert hasher.threads == cores() == hasher.worker.worker.size
    assert hasher.max_wait == DEFAULTS.hash_wait and hasher.worker.max_pending == DEFAULTS.hash_queue


def test_a_storm_of_pending_logins_fits_the_default_queue():
    # Every session that may await CONNACK (--max-pending-logins) can have
    # its check queued, as long as the work fits the wait bound.
    assert DEFAULTS.hash_queue >= DEFAULTS.max_pending_logins


class Store:
    def instance_hash(self, principal_id):
        return defer.succeed(None)

    def device_auth(self, principal_id):
        return defer.succeed(("i" * 32, "active", ENCODED))


ENCODED = hashing.hash_password("devicepw")


def test_cached_credentials_never_wait_behind_a_full_queue():
    clock = Clock()
    worker = HeldWorker()
    hasher = hashing.Hasher(None, worker=worker, max_pending=1, threads=1)
    authenticator = Authenticator(Store(), hasher, clock)
    guard = LoginGuard(authenticator, clock, RateLimiter(clock, 20, 20.0), RateLimiter(clock, 20, 20.0))
    first = []
    guard.login("192.0.2.1", ID, "devicepw").addCallback(first.append)
    worker.release()
    assert first == [Principal(DEVICE, ID, "i" * 32)]
    assert queue(hasher, 1) == 0 and queue(hasher, 1) == 1  # the queue is full now
    again = []
    guard.login("192.0.2.2", ID, "devicepw").addCallback(again.append)
    assert again == first  # answered at once, nothing queued
    assert hasher.pending == 1
