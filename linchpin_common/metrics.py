"""Prometheus ``/metrics`` on its own endpoint, for either daemon."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.twisted import MetricsResource
from twisted.web.resource import Resource
from twisted.web.server import Site


def metrics_site(collector) -> Site:
    """A Site serving ``/metrics`` (Prometheus text format) from ``collector``
    (an object with a ``collect()`` yielding metric families)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry=registry))
    return Site(root)
