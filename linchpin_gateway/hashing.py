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
import hashlib
import hmac
import os

from twisted.internet import defer

from linchpin_common.workers import BoundedWorker, ThreadWorker

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
    """Runs PBKDF2 off the reactor thread, with a bounded queue.

    ``max_pending`` counts jobs queued or running; past it, :meth:`verify`
    and :meth:`hash` fail at once with :class:`Overloaded`.
    """

    def __init__(self, reactor, iterations: int = MIN_ITERATIONS, worker=None,
                 max_pending: int = DEFAULTS.hash_queue):
        if iterations < MIN_ITERATIONS:
            raise ValueError(f"PBKDF2 iterations must be at least {MIN_ITERATIONS}")
        self.iterations = iterations
        self.worker = BoundedWorker(
            worker or ThreadWorker(reactor, "lmgateway-pbkdf2", max(1, os.cpu_count() or 1)), max_pending, Overloaded)
        # What an unknown, pending or revoked id is checked against: the
        # configured iteration count (so it costs what a real check costs)
        # and a random "hash" no password can match (2**-256), made without
        # running PBKDF2 at all.
        self._dummy = _encode(iterations, os.urandom(SALT_BYTES), os.urandom(32))

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        return self.worker.pending

    def start(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        self.worker.stop()

    def hash(self, password: str) -> defer.Deferred:
        return self.worker.run(hash_password, password, self.iterations)

    def verify(self, password: str, encoded: str | None) -> defer.Deferred:
        """Deferred[bool]; ``encoded=None`` (unknown principal) costs a real check
        at the configured iteration count, so it is no timing oracle."""
        return self.worker.run(self._verify, password, encoded)

    def _verify(self, password: str, encoded: str | None) -> bool:
        return verify_password(password, encoded or self._dummy)
