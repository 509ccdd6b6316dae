"""A development certificate authority for the local demo and the tests.

In production each device's certificate comes from AWS IoT (``edgefleet provision``); here a
small CA signs a server certificate for localhost and one client certificate per identity
(CN = thing name, or ``backend``), so Mosquitto can stand in for AWS IoT Core with mTLS.
Keys are EC P-256 and written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.common.logs import kv
from edgefleet.errors import ConfigError
from edgefleet.wire.policy import backend_identities

log = logging.getLogger(__name__)

CA_NAME = "ca"
SERVER_NAME = "server"
_VALID_DAYS = 825


def check_identity_name(name: str, *, device: bool = False) -> None:
    """Refuse a name whose files are the CA's or the broker's (``ca``, ``server``: the pair
    ``<name>.pem``/``<name>.key`` would be theirs), and ``backend`` for a device (it would
    get the backend's identity, which reads the whole fleet; so do ``backend-1`` ... ``-9``,
    its numbered connections). Case-insensitive, as some
    filesystems are."""
    folded = name.casefold()
    if folded in (CA_NAME, SERVER_NAME):
        raise ConfigError(
            f"identity name {name!r} is reserved: {folded}.pem/{folded}.key are the "
            f"{'CA' if folded == CA_NAME else 'broker'}'s own files; pick another name"
        )
    if device and folded in backend_identities():
        raise ConfigError(
            f"device name {name!r} is reserved for the backend's identity; pick another name"
        )


@dataclass(frozen=True, slots=True)
class Identity:
    """Paths of one identity's certificate and key, plus the CA that signed it."""

    name: str
    cert: Path
    key: Path
    ca: Path


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that only the owner can ever read it."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    tmp.chmod(0o600)
    tmp.replace(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgefleet dev"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


class DevCA:
    """A certificate authority kept in one folder: ``ca.pem``/``ca.key`` and issued pairs."""

    def __init__(self, folder: Path, *, ca_cn: str = "edgefleet dev CA") -> None:
        self.folder = folder
        self._ca_cn = ca_cn
        self._key: ec.EllipticCurvePrivateKey | None = None
        self._cert: x509.Certificate | None = None

    @property
    def ca_file(self) -> Path:
        return self.folder / f"{CA_NAME}.pem"

    def ensure(self) -> DevCA:
        """Load the CA from the folder, or create it when the folder has none."""
        self.folder.mkdir(parents=True, exist_ok=True)
        key_path = self.folder / f"{CA_NAME}.key"
        if self.ca_file.exists() and key_path.exists():
            loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                raise ConfigError(f"CA key {key_path} is not an EC key; delete the folder")
            self._key = loaded
            self._cert = x509.load_pem_x509_certificate(self.ca_file.read_bytes())
            return self
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(_name(self._ca_cn))
            .issuer_name(_name(self._ca_cn))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        _write_private(key_path, _key_pem(self._key))
        self.ca_file.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        log.info("created development CA", extra=kv(folder=str(self.folder)))
        return self

    def issue(self, name: str, *, server: bool = False, days: int = _VALID_DAYS) -> Identity:
        """Sign a new key pair for ``name`` (CN), overwriting an earlier pair of that name.

        ``server`` is only for the broker's own pair (``server``); every other name passes
        :func:`check_identity_name`."""
        if not (server and name == SERVER_NAME):
            check_identity_name(name)
        if self._key is None or self._cert is None:
            self.ensure()
        assert self._key is not None and self._cert is not None  # noqa: S101 - set by ensure()
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name("localhost" if server else name))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        x509.IPAddress(ipaddress.ip_address("::1")),
                    ]
                ),
                critical=False,
            )
        cert = builder.sign(self._key, hashes.SHA256())
        ident = self.paths(name)
        _write_private(ident.key, _key_pem(key))
        ident.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        log.info("issued certificate", extra=kv(cn=name, server=server, cert=str(ident.cert)))
        return ident

    def paths(self, name: str) -> Identity:
        """Where the pair for ``name`` lives (whether or not it exists yet)."""
        return Identity(
            name=name,
            cert=self.folder / f"{name}.pem",
            key=self.folder / f"{name}.key",
            ca=self.ca_file,
        )

    def ensure_identity(self, name: str, *, server: bool = False) -> Identity:
        """Return the pair for ``name``, issuing it when missing (reserved names refused)."""
        if not (server and name == SERVER_NAME):
            check_identity_name(name)
        ident = self.paths(name)
        if ident.cert.exists() and ident.key.exists():
            return ident
        return self.issue(name, server=server)


def make_dev_pki(folder: Path, identities: list[str]) -> dict[str, Identity]:
    """Create (or reuse) the CA, the server pair and one client pair per identity
    (``backend``: the backend's; any other: a device's). Reserved names are refused before
    anything is written."""
    for name in identities:
        check_identity_name(name)
    ca = DevCA(folder).ensure()
    out = {SERVER_NAME: ca.ensure_identity(SERVER_NAME, server=True)}
    for name in identities:
        out[name] = ca.ensure_identity(name)
    return out
