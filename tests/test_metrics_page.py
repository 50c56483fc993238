"""``/metrics`` is rendered on the reactor's thread (linchpin_common.metrics):
the collectors read the router's and the connector's live dictionaries,
which only that thread may walk."""

from __future__ import annotations

import threading

from prometheus_client.core import GaugeMetricFamily
from twisted.web.test.requesthelper import DummyRequest

from linchpin_common.metrics import metrics_site


class Sessions:
    """A collector over a dictionary the reactor changes, as the router's."""

    def __init__(self):
        self.clients = {f"device-{i}": "device" for i in range(3)}
        self.threads: list[threading.Thread] = []

    def collect(self):
        self.threads.append(threading.current_thread())
        yield GaugeMetricFamily("lmtest_sessions", "sessions", value=sum(1 for _ in self.clients.values()))


def test_metrics_are_collected_at_once_on_the_calling_thread():
    sessions = Sessions()
    site = metrics_site(sessions)
    request = DummyRequest([b"metrics"])
    body = site.getResourceFor(request).render(request)
    # bytes now, not NOT_DONE_YET with the collecting left to a pool thread
    assert isinstance(body, bytes) and b"lmtest_sessions 3.0" in body
    assert sessions.threads[-1] is threading.current_thread()
    assert request.responseHeaders.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
