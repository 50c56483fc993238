"""The device side: the phone's client library and the ``lmdevice`` command.

Kept apart from the connector daemon: it imports only ``linchpin_common``.
"""

from .client import (BodyStream, ConnectorOffline, Device, DeviceError, DeviceState, GatewayUnreachable,
                     PairingRejected, RequestRefused, RequestTimeout, Response, SessionLost, pair)
from .cli import main

__all__ = ["BodyStream", "ConnectorOffline", "Device", "DeviceError", "DeviceState", "GatewayUnreachable",
           "PairingRejected", "RequestRefused", "RequestTimeout", "Response", "SessionLost", "main", "pair"]
