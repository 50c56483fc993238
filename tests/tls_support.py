"""TLS fixtures for loopback tests: a private CA, a server certificate it
signed for ``localhost`` and 127.0.0.1, an unrelated second CA, and a gateway
listening with ``ssl:``.

Everything is made with ``cryptography`` and written as PEM files; private
keys are created 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support import BIN, Process


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Linchpin tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return builder.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(
        now + datetime.timedelta(days=1))


def _write_key(path: Path, key) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def _write_cert(path: Path, *certs: x509.Certificate) -> None:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))


@dataclass
class CA:
    """A self-signed CA (basicConstraints CA:true) that can sign server certificates."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    cert_path: Path

    @classmethod
    def create(cls, folder: Path, common_name: str) -> CA:
        key = ec.generate_private_key(ec.SECP256R1())
        name = _name(common_name)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        builder = (_validity(x509.CertificateBuilder())
                   .subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                content_commitment=False, key_encipherment=False,
                                                data_encipherment=False, key_agreement=False,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(ski, critical=False))
        cert = builder.sign(key, hashes.SHA256())
        slug = common_name.lower().replace(" ", "-")
        cert_path = folder / f"{slug}.pem"
        _write_cert(cert_path, cert)
        _write_key(folder / f"{slug}.key", key)
        return cls(key, cert, cert_path)

    def issue_server(self, folder: Path, dns_names=("localhost",), ips=("127.0.0.1",),
                     stem: str = "server") -> tuple[Path, Path]:
        """(key path, certificate path) of a server certificate signed by this CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        san = [x509.DNSName(n) for n in dns_names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = (_validity(x509.CertificateBuilder())
                   .subject_name(_name(dns_names[0])).issuer_name(self.cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                                content_commitment=False, key_encipherment=True,
                                                data_encipherment=False, key_agreement=False,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .add_extension(x509.SubjectAlternativeName(san), critical=False)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                                  critical=False))
        cert = builder.sign(self.key, hashes.SHA256())
        key_path, cert_path = folder / f"{stem}.key", folder / f"{stem}.pem"
        _write_key(key_path, key)
        # The leaf alone: Twisted's ssl: endpoint reads only the first
        # certificate of certKey (intermediates go in extraCertChain=), and
        # this CA signs the leaf directly, so clients trusting it need no chain.
        _write_cert(cert_path, cert)
        return key_path, cert_path


@dataclass
class TLSFiles:
    ca: Path          # the private CA that signed the server certificates
    other_ca: Path    # an unrelated CA: trusting it must not be enough
    bundle: Path      # other_ca then ca in one PEM file: every entry must count, not just the first
    server_key: Path  # for localhost and 127.0.0.1
    server_cert: Path
    wrong_name_key: Path   # signed by ca too, but for wrong-name.test only
    wrong_name_cert: Path


def make_tls_files(tmp_path: Path) -> TLSFiles:
    folder = tmp_path / "tls"
    folder.mkdir(mode=0o700)
    ca = CA.create(folder, "Linchpin Test CA")
    other = CA.create(folder, "Unrelated Test CA")
    bundle = folder / "bundle.pem"
    bundle.write_bytes(other.cert_path.read_bytes() + ca.cert_path.read_bytes())
    key, cert = ca.issue_server(folder)
    wrong_key, wrong_cert = ca.issue_server(folder, dns_names=("wrong-name.test",), ips=(), stem="wrong-name")
    return TLSFiles(ca.cert_path, other.cert_path, bundle, key, cert, wrong_key, wrong_cert)


def ssl_context(ca_file: Path) -> ssl.SSLContext:
    """A stdlib client context trusting only ``ca_file``, verifying host names."""
    return ssl.create_default_context(cafile=str(ca_file))


class TLSGateway(Process):
    """``twistd lmgateway --listen ssl:0:...`` on 127.0.0.1; ``url`` names it as ``localhost``.

    With ``wrong_name=True`` a second listener presents a certificate from the
    same trusted CA but for another name (``wrong_name_url``).
    """

    def __init__(self, data_dir, tls: TLSFiles, *extra, wrong_name: bool = False):
        certs = [(tls.server_key, tls.server_cert)]
        if wrong_name:
            certs.append((tls.wrong_name_key, tls.wrong_name_cert))
        listen = []
        for key, cert in certs:
            listen += ["--listen", f"ssl:0:interface=127.0.0.1:privateKey={_escape(key)}:certKey={_escape(cert)}"]
        super().__init__([os.path.join(BIN, "twistd"), "-n", "--pidfile=", "lmgateway", *listen,
                          "--data-dir", str(data_dir), *extra])
        ports = {}
        try:
            while len(ports) < len(certs):  # listeners may announce themselves in any order
                m = self.wait_for(r"lmgateway listening on ssl:.*:certKey=(.*) at 127\.0\.0\.1:(\d+)")
                ports[m.group(1)] = int(m.group(2))
        except BaseException:
            self.kill()
            raise
        self.port = ports[_escape(tls.server_cert)]
        self.url = f"https://localhost:{self.port}"
        if wrong_name:
            self.wrong_name_url = f"https://localhost:{ports[_escape(tls.wrong_name_cert)]}"


def _escape(path: Path) -> str:
    """A path as a value in a Twisted endpoint description (':' and '\\' are escaped)."""
    return str(path).replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")
