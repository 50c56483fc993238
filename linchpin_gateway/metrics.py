"""Counters of the gateway, and their Prometheus exposition.

The hot path only bumps plain integers on :class:`Stats`; the Prometheus
collector reads them when scraped, so relaying a message costs no lock and
no allocation for metrics.
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class Stats:
    __slots__ = ("messages_relayed", "bytes_relayed", "auth_failures", "rate_limited", "slow_consumers",
                 "untrusted_proxy_peers", "devices_moved")

    def __init__(self):
        self.messages_relayed = 0
        self.bytes_relayed = 0
        self.auth_failures = 0
        self.rate_limited = 0
        self.slow_consumers = 0
        self.untrusted_proxy_peers = 0
        self.devices_moved = 0


class GatewayCollector:
    def __init__(self, gateway):
        self.gateway = gateway

    def collect(self):
        gw = self.gateway
        stats = gw.stats
        sessions = GaugeMetricFamily("lmgateway_sessions", "Authenticated MQTT sessions", labels=["role"])
        for role in ("device", "connector"):
            sessions.add_metric([role], gw.router.count(role))
        yield sessions
        spread = GaugeMetricFamily("lmgateway_instances_by_connector_sessions",
                                   "Instances by how many connector sessions they have on this node",
                                   labels=["sessions"])
        for n, instances in sorted(gw.router.connectors_per_instance().items()):
            spread.add_metric([str(n)], instances)
        yield spread
        yield CounterMetricFamily("lmgateway_devices_moved", "Devices told 'moved': their connector went while "
                                  "another of the instance was ready", value=stats.devices_moved)
        yield GaugeMetricFamily("lmgateway_unauthenticated_sessions", "WebSocket sessions awaiting CONNACK",
                                value=gw.ws_factory.unauthenticated)
        yield CounterMetricFamily("lmgateway_messages_relayed", "PUBLISH packets delivered to a peer",
                                  value=stats.messages_relayed)
        yield CounterMetricFamily("lmgateway_bytes_relayed", "Payload bytes delivered to a peer",
                                  value=stats.bytes_relayed)
        yield CounterMetricFamily("lmgateway_auth_failures", "Failed MQTT and REST logins",
                                  value=stats.auth_failures)
        yield CounterMetricFamily("lmgateway_rate_limited", "Calls and logins refused by a rate limit",
                                  value=stats.rate_limited)
        yield CounterMetricFamily("lmgateway_slow_consumer_disconnects", "Clients cut for not reading",
                                  value=stats.slow_consumers)
        yield GaugeMetricFamily("lmgateway_pbkdf2_queue_depth", "PBKDF2 jobs queued or running",
                                value=gw.hasher.pending)
        yield CounterMetricFamily("lmgateway_password_checks", "Logins that reached a PBKDF2 check",
                                  value=gw.logins.checks)
        yield CounterMetricFamily("lmgateway_connections_refused", "Connections closed for their address's cap",
                                  value=getattr(gw.site, "refused_connections", 0))
        yield CounterMetricFamily("lmgateway_untrusted_proxy_peers", "Connections to a haproxy: listener closed: "
                                  "the peer is not a --trusted-proxy", value=stats.untrusted_proxy_peers)
        store_worker = getattr(gw.store, "_worker", None)
        yield GaugeMetricFamily("lmgateway_store_queue_depth", "Store operations queued or running",
                                value=getattr(store_worker, "pending", 0))
        yield GaugeMetricFamily("lmgateway_store_up", "1 when the store answered its last check",
                                value=1 if gw.store_up else 0)
        cluster = gw.cluster
        if cluster is None:
            return
        cs = cluster.stats
        yield GaugeMetricFamily("lmgateway_bus_up", "1 while the bus joining the nodes is connected",
                                value=1 if cluster.up else 0)
        yield GaugeMetricFamily("lmgateway_bus_rtt_seconds", "Last bus round trip (PING)", value=cs.rtt)
        yield CounterMetricFamily("lmgateway_bus_messages_out", "Messages sent to sessions on other nodes",
                                  value=cs.messages_out)
        yield CounterMetricFamily("lmgateway_bus_messages_in", "Messages from other nodes for sessions here",
                                  value=cs.messages_in)
        yield CounterMetricFamily("lmgateway_bus_messages_dropped", "Cross-node messages dropped (bus down or "
                                  "backed up)", value=cs.dropped)
        yield CounterMetricFamily("lmgateway_bus_takeovers", "Sessions here closed for a newer one elsewhere",
                                  value=cs.takeovers)
        yield CounterMetricFamily("lmgateway_bus_dead_nodes", "Other nodes declared dead (heartbeats stopped)",
                                  value=cs.dead_nodes)
