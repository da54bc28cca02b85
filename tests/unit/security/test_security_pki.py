"""The fleet PKI issues the bundles its layout promises, with the certificates the design says."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from chital import errdefs
from chital.security.pki import PKI


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return PKI.init(tmp_path / "pki")


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _subject(cert: x509.Certificate) -> dict[str, str]:
    return {a.oid._name: str(a.value) for a in cert.subject}


def _sans(cert: x509.Certificate) -> list[str]:
    return [str(v.value) for v in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value]


def _ekus(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_makes_a_p256_ca_for_ten_years(pki: PKI) -> None:
    ca = _cert(pki.directory / "ca" / "ca.crt")
    assert ca.subject == ca.issuer
    assert _subject(ca) == {"organizationName": "chital", "commonName": "chital fleet CA"}
    key = ca.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    lifetime = ca.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=3649) < lifetime <= dt.timedelta(days=3650)
    ca.verify_directly_issued_by(ca)


def test_init_refuses_to_overwrite_a_ca(pki: PKI) -> None:
    with pytest.raises(errdefs.AlreadyExists, match="refusing to overwrite"):
        PKI.init(pki.directory)


def test_init_over_an_empty_ca_directory(tmp_path: Path) -> None:
    (tmp_path / "ca").mkdir()
    PKI.init(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca"]


def test_init_over_a_non_empty_ca_directory_leaves_it_alone(tmp_path: Path) -> None:
    (tmp_path / "ca").mkdir()
    (tmp_path / "ca" / "notes").write_text("mine")
    with pytest.raises(errdefs.AlreadyExists):
        PKI.init(tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["ca", "notes"]


def test_opening_a_missing_pki_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(errdefs.FailedPrecondition, match="pki init"):
        PKI(tmp_path)


def test_controller_bundle(pki: PKI) -> None:
    bundle = pki.issue_controller(sans=("127.0.0.1", "ctl.example.org"))
    assert bundle == pki.directory / "controller"
    cert = _cert(bundle / "tls.crt")
    assert _subject(cert) == {
        "organizationName": "chital",
        "organizationalUnitName": "controller",
        "commonName": "controller",
    }
    assert _sans(cert) == ["127.0.0.1", "ctl.example.org"]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert _ekus(cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(_cert(bundle / "ca.crt"))


def test_agent_bundle_names_the_dialled_host(pki: PKI) -> None:
    bundle = pki.issue_agent("10.0.0.7", sans=("node7.example.org", "10.0.0.7"))
    assert bundle == pki.directory / "agents" / "10.0.0.7"
    cert = _cert(bundle / "tls.crt")
    assert _subject(cert)["organizationalUnitName"] == "agent"
    assert _subject(cert)["commonName"] == "10.0.0.7"
    assert _sans(cert) == ["10.0.0.7", "node7.example.org"]
    assert _ekus(cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    cert.verify_directly_issued_by(pki.ca_cert)


@pytest.mark.parametrize("role", ["admin", "operator", "viewer"])
def test_user_bundle_is_a_client_certificate_with_the_role_as_ou(pki: PKI, role: str) -> None:
    bundle = pki.issue_user("alice", role)
    assert bundle == pki.directory / "users" / "alice"
    cert = _cert(bundle / "tls.crt")
    assert cert.subject.rfc4514_string() == f"CN=alice,OU={role},O=chital"
    assert _ekus(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    cert.verify_directly_issued_by(pki.ca_cert)


def test_keys_are_0600_and_directories_0700(pki: PKI) -> None:
    pki.issue_controller()
    pki.issue_agent("node1")
    pki.issue_user("bob", "viewer")
    root = pki.directory
    for key in [root / "ca" / "ca.key", *root.glob("**/tls.key")]:
        assert _mode(key) == 0o600, key
    assert len(list(root.glob("**/tls.key"))) == 3
    for directory in [root, *(p for p in root.glob("**/*") if p.is_dir())]:
        assert _mode(directory) == 0o700, directory
    assert not list(root.glob("**/.*")), "no temporary file is left behind"


def test_reissuing_replaces_the_bundle(pki: PKI) -> None:
    first = _cert(pki.issue_user("carol", "viewer") / "tls.crt")
    key = (pki.directory / "users" / "carol" / "tls.key").read_bytes()
    second = _cert(pki.issue_user("carol", "admin") / "tls.crt")
    assert second.serial_number != first.serial_number
    assert _subject(second)["organizationalUnitName"] == "admin"
    assert (pki.directory / "users" / "carol" / "tls.key").read_bytes() != key


def test_validity_can_be_placed_in_the_past(pki: PKI) -> None:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    cert = _cert(pki.issue_user("old", "viewer", days=1, not_before=start) / "tls.crt")
    assert cert.not_valid_after_utc < dt.datetime.now(dt.UTC) - dt.timedelta(days=8)


def test_a_leaf_never_outlives_its_ca(tmp_path: Path) -> None:
    pki = PKI.init(tmp_path, days=30)
    cert = _cert(pki.issue_agent("node1", days=365) / "tls.crt")
    assert cert.not_valid_after_utc == pki.ca_cert.not_valid_after_utc


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: p.issue_user("alice", "root"), "role must be one of admin, operator, viewer"),
        (lambda p: p.issue_user("../etc", "admin"), "invalid user name"),
        (lambda p: p.issue_user("CN=x,OU=admin", "admin"), "invalid user name"),
        (lambda p: p.issue_user("", "admin"), "invalid user name"),
        (lambda p: p.issue_agent("bad host"), "invalid host"),
        (lambda p: p.issue_agent("a/b"), "invalid host"),
        (lambda p: p.issue_controller(sans=("ok", "-bad")), "invalid host"),
        (lambda p: p.issue_user("alice", "admin", days=0), "days must be positive"),
    ],
)
def test_bad_input_is_refused(pki: PKI, call: object, message: str) -> None:
    with pytest.raises(errdefs.InvalidArgument, match=message):
        call(pki)  # type: ignore[operator]
    assert not (pki.directory / "users").exists()
    assert not (pki.directory / "agents").exists()


def test_bundles_describes_every_identity(pki: PKI) -> None:
    pki.issue_controller()
    pki.issue_agent("node1", sans=("10.1.1.1",))
    pki.issue_user("alice", "admin")
    rows = {(b.kind, b.name): b for b in PKI(pki.directory).bundles()}
    assert set(rows) == {
        ("ca", "chital fleet CA"),
        ("controller", "controller"),
        ("agent", "node1"),
        ("user", "alice"),
    }
    assert rows[("agent", "node1")].sans == ("node1", "10.1.1.1")
    assert rows[("user", "alice")].role == "admin"
    assert all(b.signed_by_current_ca and b.issuer == "chital fleet CA" for b in rows.values())


def test_rotating_the_ca_keeps_the_old_one_trusted_until_dropped(pki: PKI) -> None:
    old = pki.ca_cert
    agent = pki.issue_agent("node1")
    pki.issue_user("alice", "admin")
    pki.rotate_ca(common_name="chital fleet CA 2")
    # Reopened from disk: the new CA signs, both are trusted, every bundle trusts both.
    pki = PKI(pki.directory)
    assert pki.ca_cert != old
    assert _subject(pki.ca_cert)["commonName"] == "chital fleet CA 2"
    assert pki.trusted == (pki.ca_cert, old)
    for bundle in (agent, pki.directory / "users" / "alice"):
        assert x509.load_pem_x509_certificates((bundle / "ca.crt").read_bytes()) == [pki.ca_cert, old]
    stale = {b.name for b in pki.bundles() if b.kind != "ca" and not b.signed_by_current_ca}
    assert stale == {"node1", "alice"}

    with pytest.raises(errdefs.FailedPrecondition, match="still signed by an old CA"):
        pki.drop_old_cas()
    _cert(pki.renew(agent) / "tls.crt").verify_directly_issued_by(pki.ca_cert)
    pki.renew(pki.directory / "users" / "alice")
    assert pki.drop_old_cas() == [old]
    for path in (pki.directory / "ca" / "ca.crt", agent / "ca.crt"):
        assert x509.load_pem_x509_certificates(path.read_bytes()) == [pki.ca_cert]


def test_rotation_refuses_a_ca_name_in_use(pki: PKI) -> None:
    with pytest.raises(errdefs.InvalidArgument, match="named 'chital fleet CA' already"):
        pki.rotate_ca(common_name="chital fleet CA")


def test_default_name_of_a_rotated_ca_differs(pki: PKI) -> None:
    pki.rotate_ca()
    names = {a.value for c in pki.trusted for a in c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
    assert len(names) == 2


def test_renew_keeps_name_role_and_sans(pki: PKI) -> None:
    before = {
        b.path: b
        for b in (
            pki.issue_controller("ctl", sans=("10.0.0.1", "ctl.example.org"), days=2),
            pki.issue_agent("node1", sans=("10.0.0.2",), days=2),
            pki.issue_user("alice", "operator", days=2),
        )
        for b in [next(i for i in pki.bundles() if i.path == b)]
    }
    for path, old in before.items():
        assert pki.renew(path) == path
        new = next(i for i in pki.bundles() if i.path == path)
        assert (new.kind, new.name, new.role, new.sans) == (old.kind, old.name, old.role, old.sans)
        assert new.serial != old.serial
        assert new.not_after - old.not_after > dt.timedelta(days=300)


def test_renew_of_an_unknown_bundle(pki: PKI) -> None:
    with pytest.raises(errdefs.NotFound, match="no bundle at"):
        pki.renew(pki.directory / "users" / "nobody")
