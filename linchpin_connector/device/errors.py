"""What a device user is told: one exception class per reason, each with its
``lmdevice`` exit code."""

from __future__ import annotations


class DeviceError(Exception):
    """Base of everything a device user is told; ``str()`` is the one-line reason
    (``reason`` when none is given)."""

    exit_code = 1
    reason = ""

    def __init__(self, message: str | None = None):
        super().__init__(self.reason if message is None else message)


class GatewayUnreachable(DeviceError):
    exit_code = 3


class ConnectorOffline(DeviceError):
    exit_code = 4
    reason = "the connector is offline (the intranet side is not connected to the gateway)"


class PairingRejected(DeviceError):
    exit_code = 5
    reason = "pairing rejected: the connector does not recognise this device"


class DeviceNotAccepted(DeviceError):
    """The gateway refuses this device's credentials: it was revoked (or never existed)."""

    reason = "the gateway does not accept this device (revoked or unknown)"


class RequestTimeout(DeviceError):
    exit_code = 6


class SessionLost(DeviceError):
    """The E2E session ended with the request in flight; it is not replayed.

    ``replayable``: it ended by RESET or ``moved`` (PROTOCOL.md sections 4
    and 5), after which a GET, HEAD or OPTIONS request of which no response
    part had arrived may be sent once more on a new session."""

    exit_code = 7

    def __init__(self, message: str | None = None, *, replayable: bool = False):
        super().__init__(message)
        self.replayable = replayable


class RequestRefused(DeviceError):
    """The connector answered ``err`` instead of a response."""

    exit_code = 8

    def __init__(self, code: str, message: str):
        super().__init__(f"connector refused the request ({code}): {message}")
        self.code = code
