"""The seam between a node's router and the other nodes.

The :class:`~.router.Router` knows only this node's sessions; whatever
concerns a principal that is not here goes to its :class:`IClusterPeer`:
:class:`~.cluster.Cluster` with several nodes, :data:`LOCAL_ONLY` on a node
alone (nothing is elsewhere, so nothing is sent and nothing is known).
"""

from __future__ import annotations

from zope.interface import Interface, implementer


class IClusterPeer(Interface):
    def attached(client):
        """A session of ``client.principal`` is now on this node."""

    def detached(client):
        """That session has left this node."""

    def send_up(client, payload, qos, raw=None):
        """A device's message for its connector, which is not on this node."""

    def send_down(client, device_id, payload, qos, raw=None):
        """A connector's message for a device that is not on this node."""

    def event(instance_id, event, device_id, client=None):
        """A ``$gateway/events`` event for a connector that is not on this node."""

    def connector_presence(instance_id, online, client):
        """This node's connector of ``instance_id`` went online or offline."""

    def remote_online(instance_id):
        """Whether the instance's connector is online on another node:
        True, False, or None while not known yet."""

    def connectors_elsewhere(instance_id):
        """How many connector sessions of the instance other nodes hold."""


@implementer(IClusterPeer)
class LocalOnly:
    """The peer of a node alone."""

    def attached(self, client):
        pass

    def detached(self, client):
        pass

    def send_up(self, client, payload, qos, raw=None):
        pass  # no connector elsewhere: dropped, as for an absent peer

    def send_down(self, client, device_id, payload, qos, raw=None):
        pass

    def event(self, instance_id, event, device_id, client=None):
        pass

    def connector_presence(self, instance_id, online, client):
        pass

    def remote_online(self, instance_id):
        return False

    def connectors_elsewhere(self, instance_id):
        return 0


LOCAL_ONLY = LocalOnly()
