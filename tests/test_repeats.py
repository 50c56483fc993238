"""linchpin_common.repeats: a warning a storm repeats is logged a few times."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent

from linchpin_common.repeats import Repeats


def logged():
    events = []
    return events, Logger(observer=events.append)


def test_the_first_at_once_then_one_line_an_interval_with_the_count():
    events, log = logged()
    clock = Clock()
    repeats = Repeats(log, clock, interval=10)
    for i in range(1000):
        repeats.warn("refusing {peer}", peer=f"p{i}")
    assert [formatEvent(e) for e in events] == ["refusing p0"]
    clock.advance(10)
    assert formatEvent(events[-1]) == "refusing p999 (and 998 more like it in 10 s)"
    clock.advance(10)  # a quiet interval: nothing to say...
    assert len(events) == 2
    repeats.warn("refusing {peer}", peer="late")  # ...and the next one is logged at once
    assert formatEvent(events[-1]) == "refusing late"
    repeats.warn("other {n}", n=1)  # each kind counts on its own
    assert formatEvent(events[-1]) == "other 1"


def test_stop_says_what_it_held_and_leaves_no_timer():
    events, log = logged()
    clock = Clock()
    repeats = Repeats(log, clock)
    for _ in range(3):
        repeats.warn("refusing")
    repeats.stop()
    assert [formatEvent(e) for e in events] == ["refusing", "refusing (and 1 more like it)"]
    assert clock.getDelayedCalls() == []
