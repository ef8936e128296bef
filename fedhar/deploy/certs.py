"""Keys and certificates for a test deployment: a private CA, the SuperLink's TLS certificate, device keys.

* ``ca.crt`` / ``ca.key``: a self-signed certificate authority. Devices get ``ca.crt`` to verify the
  server; ``ca.key`` signs the server certificate and never leaves the server machine.
* ``server.crt`` / ``server.key``: the SuperLink's TLS certificate, valid for the given host names and
  IP addresses (subject alternative names; a device connecting to any other name is refused).
* ``clients/<name>.key`` / ``clients/<name>.pub``: one EC P-384 key pair per device for SuperNode
  authentication (OpenSSH format, as Flower reads them). The server registers the ``.pub`` files; only
  devices holding a registered private key may join. The private key goes onto its device only.

Existing files are kept (unless ``overwrite``): adding a device later only adds its key pair, adding a
host name only issues the server certificate again, and so does a CA that no longer signs it. A CA
certificate without its key (or the reverse) is refused rather than replaced: a new CA would lock out
every device holding the old ``ca.crt``. Private keys are written with mode 0600. For production, use
certificates from your own PKI: the SuperLink only needs a CA file, a certificate and its key.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedhar.errors import ConfigError

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY, CLIENTS_DIR = "ca.crt", "ca.key", "server.crt", "server.key", "clients"


def _write(path: Path, data: bytes, private: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9*][A-Za-z0-9.*-]*", host):
                raise ConfigError(f"`{host}` is neither an IP address nor a host name") from None
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _certificate(subject: str, public_key, issuer: x509.Name | None, signing_key, days: int, ca: bool,
                 hosts: list[str] | None = None) -> x509.Certificate:  # fmt: skip
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True)  # fmt: skip
    else:
        builder = builder.add_extension(_san(hosts or list(DEFAULT_HOSTS)), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def create_ca(out: Path, days: int = 3650, overwrite: bool = False) -> tuple[Path, Path]:
    """``ca.crt`` and ``ca.key`` in ``out`` (kept when present; one without the other is refused)."""
    cert_path, key_path = out / CA_CERT, out / CA_KEY
    if not overwrite:
        if cert_path.is_file() and key_path.is_file():
            return cert_path, key_path
        if cert_path.is_file() or key_path.is_file():
            have, missing = (cert_path, key_path) if cert_path.is_file() else (key_path, cert_path)
            raise ConfigError(f"{have} exists but {missing} does not: restore {missing.name}, or remove {have.name} "
                              "too and run `fedhar certs` again (a new CA: every device then needs the new "
                              "ca.crt)")  # fmt: skip
    key = ec.generate_private_key(ec.SECP384R1())
    cert = _certificate("fedhar test CA", key.public_key(), None, key, days, ca=True)
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return cert_path, key_path


def create_server_certificate(out: Path, hosts: list[str], days: int = 825,
                              overwrite: bool = False) -> tuple[Path, Path]:  # fmt: skip
    """``server.crt`` / ``server.key`` signed by the CA in ``out``, valid for ``hosts``.

    An existing certificate is kept when the CA in ``out`` signed it and it covers ``hosts``, else issued
    again for its hosts and ``hosts`` (same CA: devices keep working)."""
    cert_path, key_path = out / SERVER_CERT, out / SERVER_KEY
    ca_cert = x509.load_pem_x509_certificate((out / CA_CERT).read_bytes())
    if cert_path.is_file() and key_path.is_file() and not overwrite:
        if set(hosts) <= set(server_certificate_hosts(cert_path)) and _signed_by(cert_path, ca_cert):
            return cert_path, key_path
        hosts = list(dict.fromkeys([*server_certificate_hosts(cert_path), *hosts]))
    ca_key = serialization.load_pem_private_key((out / CA_KEY).read_bytes(), None)
    key = ec.generate_private_key(ec.SECP384R1())
    cert = _certificate(hosts[0], key.public_key(), ca_cert.subject, ca_key, days, ca=False, hosts=hosts)
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return cert_path, key_path


def _signed_by(cert_path: Path, ca_cert: x509.Certificate) -> bool:
    try:
        x509.load_pem_x509_certificate(cert_path.read_bytes()).verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def create_client_key(out: Path, name: str, overwrite: bool = False) -> tuple[Path, Path]:
    """``clients/<name>.key`` (OpenSSH EC P-384 private key) and ``clients/<name>.pub``."""
    if not CLIENT_NAME.match(name):
        raise ConfigError(f"client name `{name}`: use letters, digits, `_`, `.` and `-` (up to 63 characters)")
    key_path, pub_path = out / CLIENTS_DIR / f"{name}.key", out / CLIENTS_DIR / f"{name}.pub"
    if key_path.is_file() and pub_path.is_file() and not overwrite:
        return key_path, pub_path
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())  # fmt: skip
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(key_path, private, private=True)
    _write(pub_path, public + f" {name}\n".encode(), private=False)
    return key_path, pub_path


def create_test_deployment(out: Path, hosts: list[str] | None = None, clients: list[str] | None = None,
                           overwrite: bool = False) -> dict[str, list[Path]]:  # fmt: skip
    """CA, server certificate for ``hosts`` and a key pair per client name; returns the files by role."""
    hosts = list(hosts or DEFAULT_HOSTS)
    if len(set(clients or [])) != len(clients or []):
        raise ConfigError(f"client names must be unique, got {clients}")
    ca = create_ca(out, overwrite=overwrite)
    server = create_server_certificate(out, hosts, overwrite=overwrite)
    keys = [p for name in clients or [] for p in create_client_key(out, name, overwrite)]
    return {"ca": list(ca), "server": list(server), "clients": keys}


def server_certificate_hosts(path: Path) -> list[str]:
    """The host names and IP addresses a server certificate is valid for (to name a mismatch early)."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in san.get_values_for_type(x509.IPAddress)] + san.get_values_for_type(x509.DNSName)
