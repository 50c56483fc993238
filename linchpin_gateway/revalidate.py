"""Every live session of this node checked again against the store.

Revocations, deletions and password changes made on another node reach
this one over the bus.  While the bus (or the store) was away, they did
not: so when it comes back, and every ``interval`` seconds as a backstop
(also on a node that shares a PostgreSQL store without a bus), this node
reads which of its live principals still exist, in batches of
:data:`BATCH` ids per store read, off the reactor thread through the
store's bounded worker, and closes the sessions of those that are gone
(a device revoked or no longer active, an instance deleted).  Cached logins
of the gone principals are forgotten too; a changed instance password is
caught by the login cache's own check of the stored credential, and live
sessions survive a password change as the contract says.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

from .router import CONNECTOR
from .store import StoreUnavailable

BATCH = 500


class SessionCheck:
    log = Logger(namespace="lmgateway")

    def __init__(self, router, store, authenticator):
        self.router = router
        self.store = store
        self.authenticator = authenticator
        self._running: defer.Deferred | None = None
        self._again = False
        self.runs = 0
        self.closed = 0

    def run(self, why: str = "periodic") -> defer.Deferred:
        """Check now (once more after a check under way, if one is); fires
        when done, never fails (a store error is logged: the next run retries)."""
        if self._running is not None:
            self._again = True
            return self._running
        d = defer.ensureDeferred(self._loop(why))
        if not d.called:  # (with an inline store it is over already)
            self._running = d
        return d

    async def _loop(self, why: str) -> None:
        try:
            while True:
                self._again = False
                await self._check(why)
                if not self._again:
                    return
        except StoreUnavailable:
            self.log.warn("could not re-validate live sessions: the store is unavailable; the next check retries")
        except Exception:
            self.log.failure("re-validating live sessions against the store failed; the next check retries")
        finally:
            self._running = None  # (set after this when the check waited on the store)

    async def _check(self, why: str) -> None:
        principals = self.router.principals()
        instances = sorted({p.instance_id for p in principals})
        devices = sorted(p.id for p in principals if p.role != CONNECTOR)
        live_instances, live_devices = set(), set()
        for start in range(0, max(len(instances), len(devices)), BATCH):
            found_i, found_d = await self.store.present(instances[start:start + BATCH], devices[start:start + BATCH])
            live_instances |= found_i
            live_devices |= found_d
        self.runs += 1
        closed = 0
        for p in principals:
            if p.instance_id not in live_instances:
                closed += 1  # the whole instance goes below
            elif p.role != CONNECTOR and p.id not in live_devices:
                closed += 1
                self.authenticator.forget(p.id)
                self.router.revoke_device(p.instance_id, p.id)
        for instance_id in instances:
            if instance_id not in live_instances:
                self.authenticator.forget(instance_id)
                self.router.drop_instance(instance_id)
        self.closed += closed
        if closed or (why != "periodic" and principals):
            self.log.info("re-validated {n} live sessions against the store ({why}): closed {closed}",
                          n=len(principals), why=why, closed=closed)
