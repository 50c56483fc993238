"""The seam between a node's router and the other nodes.

The :class:`~.router.Router` knows only this node's sessions; whatever
concerns a principal that is not here goes to its :class:`IClusterPeer`:
:class:`~.cluster.Cluster` with several nodes, :data:`LOCAL_ONLY` on a node
alone (nothing is elsewhere, so nothing is sent and nothing is known).
"""

from __future__ import annotations

from twisted.internet import defer
from zope.interface import Interface, implementer


class IClusterPeer(Interface):
    def attached(client):
        """A session of ``client.principal`` is now on this node."""

    def detached(client, replaced=False):
        """That session has left this node (``replaced``: by a newer session
        of its key, taken over)."""

    def connector_state(client):
        """A connector session here subscribed to ``devices/+/up``, drained
        or unsubscribed."""

    def send_up(client, payload, qos, raw=None, to=None):
        """A device's message for the connector session named ``to`` of its
        instance, which is not on this node (None: there is none)."""

    def send_down(client, device_id, payload, qos, raw=None):
        """A connector's message for a device that is not on this node."""

    def event(instance_id, event, device_id, client=None):
        """A ``$gateway/events`` event for a connector that is not on this node."""

    def remote_online(instance_id):
        """Whether a connector of the instance is online on another node:
        True, False, or None while not known yet."""

    def remote_ready(instance_id):
        """The names of the instance's ready connector sessions on other nodes."""

    def connectors_elsewhere(instance_id):
        """Deferred[set]: the names of the instance's connector sessions
        other nodes hold (those subscribed: ready or draining)."""


@implementer(IClusterPeer)
class LocalOnly:
    """The peer of a node alone."""

    def attached(self, client):
        pass

    def detached(self, client, replaced=False):
        pass

    def connector_state(self, client):
        pass

    def send_up(self, client, payload, qos, raw=None, to=None):
        pass  # no connector elsewhere: dropped, as for an absent peer

    def send_down(self, client, device_id, payload, qos, raw=None):
        pass

    def event(self, instance_id, event, device_id, client=None):
        pass

    def remote_online(self, instance_id):
        return False

    def remote_ready(self, instance_id):
        return ()

    def connectors_elsewhere(self, instance_id):
        return defer.succeed(frozenset())


LOCAL_ONLY = LocalOnly()
