"""Warnings that may repeat thousands of times a second, logged a few times.

A connect storm refuses tens of thousands of clients in a minute or two (a
node that restarted under 10,000 sessions: 57,000 refusals in 3.5 minutes,
docs/benchmarks.md). A line for each is no use to an operator and costs the
reactor's thread, which writes them, the time it needs for the logins. So
:class:`Repeats` logs the first of a kind at once and then at most one line
per ``interval`` seconds for that kind, saying how many it stood for.
"""

from __future__ import annotations

from twisted.logger import Logger


class Repeats:
    def __init__(self, log: Logger, clock, interval: float = 10.0):
        self.log = log
        self.clock = clock
        self.interval = interval
        self._kinds: dict[str, list] = {}  # format -> [held count, last kwargs, pending flush call or None]

    def warn(self, format: str, **kwargs) -> None:
        """``log.warn(format, **kwargs)``, unless one of this ``format`` was
        logged less than ``interval`` seconds ago: then it is counted, and
        the count logged (with the latest one's fields) when the interval ends."""
        kind = self._kinds.get(format)
        if kind is None:
            self.log.warn(format, **kwargs)
            self._kinds[format] = [0, None, self.clock.callLater(self.interval, self._flush, format)]
            return
        kind[0] += 1
        kind[1] = kwargs

    def _flush(self, format: str) -> None:
        held, kwargs, _ = self._kinds[format]
        if not held:
            del self._kinds[format]  # quiet for a whole interval: the next one is logged at once
            return
        self.log.warn(format + " (and {repeats} more like it in {interval:g} s)", repeats=held - 1,
                      interval=self.interval, **kwargs)
        self._kinds[format] = [0, None, self.clock.callLater(self.interval, self._flush, format)]

    def stop(self) -> None:
        """Log what is held now and stop the timers (the service stops)."""
        for format in list(self._kinds):
            held, kwargs, call = self._kinds.pop(format)
            if call.active():
                call.cancel()
            if held:
                self.log.warn(format + " (and {repeats} more like it)", repeats=held - 1, **kwargs)
