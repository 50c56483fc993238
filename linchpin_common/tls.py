"""Client-side TLS: what the connector and the device trust, and one-line
reasons when TLS with the gateway fails."""

from __future__ import annotations

import re

from OpenSSL import SSL, crypto
from service_identity import VerificationError
from twisted.internet.ssl import Certificate, optionsForClientTLS, platformTrust, trustRootFromCertificates


class TLSFailure(ConnectionError):
    """TLS with the gateway failed (most often: its certificate is not trusted).

    A ``ConnectionError``, so whatever treats the gateway as unreachable still
    does, but ``str()`` says what went wrong instead of a bare OpenSSL tuple.
    """


def tls_failure(error, where: str) -> TLSFailure | None:
    """The :class:`TLSFailure` behind a connection error or Failure, if TLS caused it.

    treq/Agent wrap the real cause in ``reasons`` (ResponseNeverReceived,
    RequestTransmissionFailed, ...); a WebSocket sees it in connectionLost.
    """
    error = getattr(error, "value", error)
    causes = [getattr(r, "value", r) for r in (getattr(error, "reasons", None) or ())] + [error]
    for cause in causes:
        if isinstance(cause, VerificationError):
            return TLSFailure(f"TLS: the certificate of {where} is not valid for that name ({cause})")
        if isinstance(cause, SSL.Error):
            errors = cause.args[0] if cause.args and isinstance(cause.args[0], list) else []
            detail = "; ".join(str(e[-1]) for e in errors if isinstance(e, tuple) and e) or str(cause)
            hint = (" (pass --ca-file with the PEM of the CA that signed the gateway's certificate)"
                    if "certificate" in detail else "")
            return TLSFailure(f"TLS with {where} failed: {detail or 'handshake error'}{hint}")
    return None


class CAFileError(ValueError):
    """``--ca-file`` names no readable PEM certificate; ``str()`` is a one-line reason."""


_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?\n-----END CERTIFICATE-----", re.DOTALL)


def trust_root(ca_file: str | None = None):
    """What client TLS trusts: every certificate of a PEM ``ca_file`` (a bundle
    works, not just its first entry), or the system roots without one."""
    if not ca_file:
        return platformTrust()
    try:
        with open(ca_file, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise CAFileError(f"cannot read the CA file {ca_file}: {e.strerror or e}")
    try:
        certificates = [Certificate.loadPEM(block) for block in _PEM_CERTIFICATE.findall(pem)]
    except crypto.Error:
        raise CAFileError(f"the CA file {ca_file} holds a malformed certificate")
    if not certificates:
        raise CAFileError(f"the CA file {ca_file} holds no PEM certificate")
    return trustRootFromCertificates(certificates)


def tls_options(hostname: str, ca_file: str | None = None):
    """Client TLS options verifying ``hostname``; a PEM ``ca_file`` replaces the system roots."""
    return optionsForClientTLS(hostname, trustRoot=trust_root(ca_file))
