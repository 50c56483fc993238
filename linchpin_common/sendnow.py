"""Writing a message to an idle TCP socket at once.

Twisted buffers every write, adds the socket to the reactor's writers (an
epoll change), sends on the next turn of the loop and removes the socket
again (another change). For a message that comes alone, such as the
PINGRESP of an idle session, that is two system calls and a wake-up more
than the send itself: a sixth of what 10,000 idle sessions cost a node.
:func:`write_now` sends straight away when the transport is a plain TCP
connection with nothing waiting in its buffer, and leaves everything else
(TLS, a connection closing, a backlog, a socket that does not take it all)
to Twisted, so the order of the bytes and the flow control stay Twisted's.
It is not for messages that come in runs: there Twisted's buffering lets
one send carry many, and sending each at once costs more than it saves.
"""

from __future__ import annotations

from twisted.internet import tcp


def write_now(transport, head: bytes, payload: bytes) -> None:
    """``transport.writeSequence((head, payload))``, sent at once when it can be."""
    if (isinstance(transport, tcp.Connection) and not transport.TLS and transport.connected
            and not transport.disconnecting and not transport._writeDisconnected
            and not transport.dataBuffer and not transport._tempDataBuffer):
        try:
            sent = transport.socket.sendmsg((head, payload))
        except OSError:  # full, or the peer is gone: Twisted's own write finds out and says so
            sent = 0
        if sent == len(head) + len(payload):
            return
        if sent >= len(head):
            transport.write(payload[sent - len(head):])
            return
        head = head[sent:]
    transport.writeSequence((head, payload))
