"""Prometheus ``/metrics`` on its own endpoint, for either daemon."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.web.resource import Resource
from twisted.web.server import Site


class MetricsPage(Resource):
    """``/metrics``, rendered on the reactor's thread.

    prometheus_client's own Twisted resource is a WSGI application, run on
    the reactor's thread pool: the collectors then walked the router's and
    the connector's dictionaries while the reactor changed them, and a
    scrape during a connect storm failed ("dictionary changed size during
    iteration", a 500). The collectors only read counters and sizes, so
    rendering here costs the reactor little and sees one consistent state.
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry):
        super().__init__()
        self.registry = registry

    def render_GET(self, request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.registry)


def metrics_site(collector) -> Site:
    """A Site serving ``/metrics`` (Prometheus text format) from ``collector``
    (an object with a ``collect()`` yielding metric families)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    root = Resource()
    root.putChild(b"metrics", MetricsPage(registry))
    return Site(root)
