"""The development CA: files, permissions, chains."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from edgefleet.cli import main
from edgefleet.dev.pki import DevCA, make_dev_pki
from edgefleet.errors import ConfigError
from edgefleet.sim.client import issue_identities


def test_pki_command_writes_keys_0600_and_certs_with_cn(tmp_path: Path) -> None:
    assert main(["pki", "--dir", str(tmp_path), "dev-1", "backend"]) == 0
    for name in ("ca", "server", "dev-1", "backend"):
        key = tmp_path / f"{name}.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((tmp_path / "dev-1.pem").read_bytes())
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "dev-1"
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca)


def test_server_certificate_names_localhost_and_loopback(tmp_path: Path) -> None:
    made = make_dev_pki(tmp_path, [])
    cert = x509.load_pem_x509_certificate(made["server"].cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]


def test_rerun_reuses_the_ca(tmp_path: Path) -> None:
    make_dev_pki(tmp_path, ["a"])
    first = (tmp_path / "ca.pem").read_bytes()
    make_dev_pki(tmp_path, ["a", "b"])
    assert (tmp_path / "ca.pem").read_bytes() == first
    b = x509.load_pem_x509_certificate((tmp_path / "b.pem").read_bytes())
    b.verify_directly_issued_by(x509.load_pem_x509_certificate(first))


def test_bad_identity_name_is_one_line_error(tmp_path: Path, capsys: object) -> None:
    assert main(["pki", "--dir", str(tmp_path), "dev/1"]) == 2


def test_issue_overwrites_with_a_new_key(tmp_path: Path) -> None:
    ca = DevCA(tmp_path).ensure()
    one = ca.issue("d").key.read_bytes()
    assert ca.issue("d").key.read_bytes() != one


@pytest.mark.parametrize("name", ["ca", "server", "CA", "Server"])
def test_reserved_names_are_refused_and_nothing_is_handed_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    make_dev_pki(tmp_path, ["dev-1"])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert main(["pki", "--dir", str(tmp_path), "dev-2", name]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    assert len(errors) == 1
    assert f"edgefleet pki: error: identity name {name!r} is reserved" in errors[0]
    # No file changed and no new pair: not even dev-2, named before the bad one.
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("name", ["ca", "server"])
def test_the_ca_refuses_to_issue_or_return_a_reserved_pair(tmp_path: Path, name: str) -> None:
    ca = DevCA(tmp_path).ensure()
    make_dev_pki(tmp_path, [])
    with pytest.raises(ConfigError, match="reserved"):
        ca.ensure_identity(name)  # would return the CA's or the broker's own key
    with pytest.raises(ConfigError, match="reserved"):
        ca.issue(name)


def test_backend_is_refused_for_a_device_but_issued_as_the_backend(tmp_path: Path) -> None:
    ca = DevCA(tmp_path).ensure()
    with pytest.raises(ConfigError, match="reserved for the backend"):
        issue_identities(ca, ["sim-0001", "backend"])
    assert not (tmp_path / "sim-0001.pem").exists()
    assert main(["pki", "--dir", str(tmp_path), "backend"]) == 0
    cert = x509.load_pem_x509_certificate((tmp_path / "backend.pem").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "backend"
