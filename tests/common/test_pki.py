"""The development CA: files, permissions, chains."""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from edgefleet.cli import main
from edgefleet.common.pki import DevCA, make_dev_pki


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
