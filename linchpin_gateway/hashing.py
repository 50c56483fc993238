"""Credential hashing: PBKDF2 for passwords, sha256 for setup keys.

Password hashes are self-describing strings::

    pbkdf2_sha256$<iterations>$<salt b64>$<hash b64>

so the iteration count can be raised later without breaking old rows.  The
pure functions here are blocking (PBKDF2 costs tens of milliseconds); the
:class:`Hasher` runs them on a bounded thread pool with a bounded queue so the
reactor thread never pays for them and a storm of logins cannot queue
unbounded work.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import os
import time

from twisted.internet import defer

from linchpin_common.workers import BoundedWorker, ThreadWorker, cores

from .config import DEFAULTS, MIN_ITERATIONS

SALT_BYTES = 16
_ALGORITHM = "pbkdf2_sha256"


class Overloaded(Exception):
    """The hashing queue is full: answer "server unavailable" at once."""


def hash_password(password: str, iterations: int = MIN_ITERATIONS, salt: bytes | None = None) -> str:
    if iterations < MIN_ITERATIONS:
        raise ValueError(f"PBKDF2 iterations must be at least {MIN_ITERATIONS}")
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return _encode(iterations, salt, digest)


def _encode(iterations: int, salt: bytes, digest: bytes) -> str:
    return "$".join([_ALGORITHM, str(iterations), base64.b64encode(salt).decode("ascii"),
                     base64.b64encode(digest).decode("ascii")])


def verify_password(password: str, encoded: str) -> bool:
    """Constant-time check of ``password`` against a stored hash string.

    A malformed stored string verifies as False (after doing the same work
    as a real check, so it is no timing oracle either).
    """
    try:
        algorithm, iterations_s, salt_b64, hash_b64 = encoded.split("$")
        iterations = int(iterations_s)
        salt = base64.b64decode(salt_b64, validate=True)
        expected = base64.b64decode(hash_b64, validate=True)
        ok = algorithm == _ALGORITHM and iterations >= MIN_ITERATIONS
    except ValueError:
        iterations, salt, expected, ok = MIN_ITERATIONS, b"\0" * SALT_BYTES, b"", False
    actual = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return hmac.compare_digest(actual, expected) and ok


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("ascii", "replace")).hexdigest()


class Hasher:
    """Runs PBKDF2 off the reactor thread, on one thread per core, with a
    queue bounded twice.

    ``max_pending`` counts jobs queued or running; ``max_wait`` is how long a
    new job may expect to wait for its result (the jobs ahead of it times the
    measured duration of one job, over the pool's threads).  Past either,
    :meth:`verify` and :meth:`hash` fail at once with :class:`Overloaded`.

    The wait bound is what keeps the pool busy in a connect storm: a queue of
    so many *jobs* holds a few seconds of work on a fast machine, less than a
    refused client's retry back-off (8 s and more), so the pool ran dry
    between waves of retries; a queue of so many *seconds* holds the same
    time on any machine.  Until a job has been timed only ``max_pending``
    applies.
    """

    def __init__(self, reactor, iterations: int = MIN_ITERATIONS, worker=None,
                 max_pending: int = DEFAULTS.hash_queue, max_wait: float | None = DEFAULTS.hash_wait,
                 threads: int | None = None):
        if iterations < MIN_ITERATIONS:
            raise ValueError(f"PBKDF2 iterations must be at least {MIN_ITERATIONS}")
        self.iterations = iterations
        if worker is None:
            worker = ThreadWorker(reactor, "lmgateway-pbkdf2", threads or cores())
        self.threads = threads or getattr(worker, "size", 1)
        self.worker = BoundedWorker(worker, max_pending, Overloaded)
        self.max_wait = max_wait
        self.job_seconds: float | None = None  # moving average of one job's duration, once measured
        self._durations: collections.deque[float] = collections.deque()  # measured, not yet averaged
        # What an unknown, pending or revoked id is checked against: the
        # configured iteration count (so it costs what a real check costs)
        # and a random "hash" no password can match (2**-256), made without
        # running PBKDF2 at all.
        self._dummy = _encode(iterations, os.urandom(SALT_BYTES), os.urandom(32))

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        return self.worker.pending

    def expected_wait(self) -> float:
        """Seconds a job queued now would wait for its result (0 until one was timed)."""
        if self.job_seconds is None:
            return 0.0
        return (self.worker.pending + 1) * self.job_seconds / self.threads

    def start(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        self.worker.stop()

    def hash(self, password: str) -> defer.Deferred:
        return self._run(hash_password, password, self.iterations)

    def verify(self, password: str, encoded: str | None) -> defer.Deferred:
        """Deferred[bool]; ``encoded=None`` (unknown principal) costs a real check
        at the configured iteration count, so it is no timing oracle."""
        return self._run(self._verify, password, encoded)

    def _verify(self, password: str, encoded: str | None) -> bool:
        return verify_password(password, encoded or self._dummy)

    def _run(self, fn, *args) -> defer.Deferred:
        if self.max_wait is not None and self.expected_wait() > self.max_wait:
            return defer.fail(Overloaded())
        return self.worker.run(self._timed, fn, *args).addBoth(self._measured)

    def _timed(self, fn, *args):
        """``fn(*args)`` on the worker's thread, its duration noted for the reactor's."""
        started = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self._durations.append(time.perf_counter() - started)  # deque.append is thread-safe

    def _measured(self, result):
        while self._durations:
            seconds = self._durations.popleft()
            # An average over the last few dozen jobs: a storm's first jobs
            # ran on an idle machine, later ones share it with the sessions.
            average = self.job_seconds
            self.job_seconds = seconds if average is None else average + (seconds - average) / 16
        return result
