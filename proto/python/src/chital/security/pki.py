"""The fleet PKI: one CA, and a bundle of certificate files per identity.

Every identity is a directory, a *bundle*, holding ``ca.crt`` (the CA certificates to trust),
``tls.crt`` (its own certificate) and ``tls.key`` (its private key). The layout of a PKI directory
is an interface: deployment tools copy these bundles to the hosts as they are::

    <pki>/ca/ca.crt, <pki>/ca/ca.key              the fleet CA
    <pki>/controller/{ca.crt,tls.crt,tls.key}     the controller (OU=controller)
    <pki>/agents/<host>/{ca.crt,tls.crt,tls.key}  one agent host (OU=agent, SAN=<host>)
    <pki>/users/<name>/{ca.crt,tls.crt,tls.key}   one user or service (OU=<role>)

The subject of every certificate is ``O=chital, OU=<role>, CN=<name>``: the role is the OU. Keys
are EC P-256, signed with ECDSA-SHA256. Keys are written 0600 and directories 0700; every file is
replaced atomically (written beside, then renamed).

Every ``issue_*`` method takes the validity in ``days`` and, for tests, ``not_before``: the
certificate is valid from then instead of from now (a past ``not_before`` issues an expired one).

``ca/ca.crt`` may hold several CA certificates while the CA is rotated: the one that matches
``ca/ca.key`` signs, the others stay trusted until :meth:`PKI.drop_old_cas`. Each bundle's
``ca.crt`` is a copy of ``ca/ca.crt``.
"""

from __future__ import annotations

import datetime as dt
import errno
import ipaddress
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from chital.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "PKI",
    "ROLES",
    "SERVICE_ROLES",
    "BundleInfo",
]

ROLES = ("admin", "operator", "viewer")
"""The roles of clients, strongest first."""

SERVICE_ROLES = ("controller", "agent")
"""The roles of the fleet's own services."""

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"

ORGANIZATION = "chital"

# Certificates start this long before they are issued, so that a host whose clock is a little
# behind the issuer's accepts them at once.
CLOCK_SKEW = dt.timedelta(minutes=5)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


@dataclass(frozen=True)
class BundleInfo:
    """What a bundle's certificate says, for ``chital-controller pki show``."""

    path: Path
    kind: str  # "ca", "controller", "agent" or "user"
    name: str  # CN
    role: str  # OU ("" for the CA)
    sans: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    serial: int
    issuer: str  # CN of the issuing CA
    signed_by_current_ca: bool


class PKI:
    """An existing PKI directory (see :meth:`init` to create one)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        ca_dir = self.directory / "ca"
        try:
            trusted = x509.load_pem_x509_certificates((ca_dir / CA_CERT).read_bytes())
            key = serialization.load_pem_private_key((ca_dir / CA_KEY).read_bytes(), password=None)
        except FileNotFoundError as exc:
            raise FailedPrecondition(
                f"no CA in {self.directory} ({exc.filename} is missing): run `chital-controller pki init`"
            ) from exc
        except (OSError, ValueError) as exc:
            raise FailedPrecondition(f"cannot load the CA in {ca_dir}: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise FailedPrecondition(f"{ca_dir / CA_KEY} is not an EC private key")
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        signers = [c for c in trusted if _spki(c) == public]
        if not signers:
            raise FailedPrecondition(f"no certificate in {ca_dir / CA_CERT} matches {ca_dir / CA_KEY}")
        self._key = key
        self.ca_cert = signers[0]
        self.trusted = tuple(trusted)

    # -- the CA -------------------------------------------------------------------------------

    @classmethod
    def init(cls, directory: str | Path, *, common_name: str = "chital fleet CA", days: int = 3650) -> PKI:
        """Create a PKI directory with a new CA. Refuses to overwrite an existing CA."""
        directory = Path(directory)
        ca_dir = directory / "ca"
        exists = AlreadyExists(f"a CA exists already in {ca_dir}; refusing to overwrite it")
        if (ca_dir / CA_KEY).exists() or (ca_dir / CA_CERT).exists():
            raise exists
        key, cert = _new_ca(common_name, days)
        _make_dir(directory)
        # Both files are made in a directory of their own that is then renamed to ca/: a CA is
        # whole or absent, and of two concurrent inits one fails.
        staging = Path(tempfile.mkdtemp(prefix=".ca.", dir=directory))  # created 0700
        try:
            _write(staging / CA_KEY, _key_pem(key), 0o600)
            _write(staging / CA_CERT, _certs_pem([cert]), 0o644)
            try:
                staging.rename(ca_dir)  # replaces an empty ca/ only
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise exists from None
                raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return cls(directory)

    def rotate_ca(self, *, common_name: str | None = None, days: int = 3650) -> Path:
        """Make a new CA the signer. The old CA certificates stay trusted (``ca/ca.crt`` holds the new
        one first, then the old ones) and every bundle's ``ca.crt`` is refreshed. The old CA key is
        discarded: certificates it signed stay valid until :meth:`drop_old_cas`."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H%M%S")
        common_name = common_name or f"chital fleet CA {stamp}"
        # Chain building looks issuers up by subject name: two trusted CAs must not share one.
        if any(_cn(c) == common_name for c in self.trusted):
            raise InvalidArgument(f"a trusted CA is named {common_name!r} already; choose another name")
        key, cert = _new_ca(common_name, days)
        ca_dir = self.directory / "ca"
        # The new certificate is trusted before its key may sign anything.
        _write(ca_dir / CA_CERT, _certs_pem([cert, *self.trusted]), 0o644)
        _write(ca_dir / CA_KEY, _key_pem(key), 0o600)
        self._key, self.ca_cert, self.trusted = key, cert, (cert, *self.trusted)
        self.refresh_trust()
        return ca_dir

    def drop_old_cas(self, *, force: bool = False) -> list[x509.Certificate]:
        """Trust only the current CA again, in ``ca/ca.crt`` and in every bundle. Refuses while a
        bundle still holds a certificate of an old CA, unless ``force``. Returns the dropped ones."""
        stale = [b.path for b in self.bundles() if b.kind != "ca" and not b.signed_by_current_ca]
        if stale and not force:
            listed = ", ".join(str(p) for p in stale)
            raise FailedPrecondition(f"these bundles are still signed by an old CA, re-issue them: {listed}")
        dropped = [c for c in self.trusted if c is not self.ca_cert]
        _write(self.directory / "ca" / CA_CERT, _certs_pem([self.ca_cert]), 0o644)
        self.trusted = (self.ca_cert,)
        self.refresh_trust()
        return dropped

    def refresh_trust(self) -> list[Path]:
        """Write the trusted CA certificates into the ``ca.crt`` of every bundle. Returns the bundles."""
        pem = _certs_pem(self.trusted)
        paths = [path for _kind, path in self._bundle_dirs()]
        for path in paths:
            _write(path / CA_CERT, pem, 0o644)
        return paths

    # -- issuing ------------------------------------------------------------------------------

    def issue_controller(
        self,
        name: str = "controller",
        sans: Sequence[str] = ("127.0.0.1", "localhost"),
        days: int = 365,
        *,
        not_before: dt.datetime | None = None,
    ) -> Path:
        """The controller's bundle, ``<pki>/controller``: it serves the API (``sans`` are the
        addresses clients dial) and is the client certificate agents accept."""
        _check_name(name, "controller name")
        return self._issue(
            self.directory / "controller",
            name=name,
            role="controller",
            sans=sans,
            server=True,
            days=days,
            not_before=not_before,
        )

    def issue_agent(
        self,
        host: str,
        sans: Sequence[str] = (),
        days: int = 365,
        *,
        not_before: dt.datetime | None = None,
    ) -> Path:
        """An agent's bundle, ``<pki>/agents/<host>``. ``host`` is the IP address or DNS name the
        controller dials (the address the agent is registered with); ``sans`` adds other names."""
        _check_host(host)
        return self._issue(
            self.directory / "agents" / host,
            name=host,
            role="agent",
            sans=(host, *sans),
            server=True,
            days=days,
            not_before=not_before,
        )

    def issue_user(
        self,
        name: str,
        role: str,
        days: int = 365,
        *,
        not_before: dt.datetime | None = None,
    ) -> Path:
        """A client certificate for a user or a service, ``<pki>/users/<name>``, with one of
        :data:`ROLES`."""
        _check_name(name, "user name")
        if role not in ROLES:
            raise InvalidArgument(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        return self._issue(
            self.directory / "users" / name,
            name=name,
            role=role,
            sans=(),
            server=False,
            days=days,
            not_before=not_before,
        )

    def _issue(
        self,
        bundle: Path,
        *,
        name: str,
        role: str,
        sans: Sequence[str],
        server: bool,
        days: int,
        not_before: dt.datetime | None,
    ) -> Path:
        if days <= 0:
            raise InvalidArgument(f"days must be positive, not {days}")
        names = _san_entries(sans)
        start = not_before or dt.datetime.now(dt.UTC)
        # A certificate never outlives the CA that signs it.
        end = min(start + dt.timedelta(days=days), self.ca_cert.not_valid_after_utc)
        key = ec.generate_private_key(ec.SECP256R1())
        usages = (
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            if server
            else [ExtendedKeyUsageOID.CLIENT_AUTH]
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(_subject(name, role))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - CLOCK_SKEW if not_before is None else start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        _make_dir(bundle.parent)
        _make_dir(bundle)
        # Key first: until the certificate is replaced too, the old pair fails loudly, never silently.
        _write(bundle / TLS_KEY, _key_pem(key), 0o600)
        _write(bundle / TLS_CERT, _certs_pem([cert]), 0o644)
        _write(bundle / CA_CERT, _certs_pem(self.trusted), 0o644)
        return bundle

    def renew(self, bundle: str | Path, days: int = 365) -> Path:
        """Re-issue a bundle with the name, role and SANs its certificate has now, signed by the
        current CA, valid ``days`` from now (after a CA rotation, or before an expiry)."""
        bundle = Path(bundle)
        for info in self.bundles():
            if info.kind == "ca" or info.path.resolve() != bundle.resolve():
                continue
            if info.kind == "controller":
                return self.issue_controller(info.name, sans=info.sans, days=days)
            if info.kind == "agent":
                return self.issue_agent(info.path.name, sans=info.sans, days=days)
            return self.issue_user(info.name, info.role, days=days)
        raise NotFound(f"no bundle at {bundle} in the PKI {self.directory}")

    # -- inspection ---------------------------------------------------------------------------

    def bundles(self) -> list[BundleInfo]:
        """The CA certificates and every bundle, as their certificates describe them."""
        infos = [self._info(self.directory / "ca", "ca", cert) for cert in self.trusted]
        for kind, path in self._bundle_dirs():
            try:
                cert = x509.load_pem_x509_certificate((path / TLS_CERT).read_bytes())
            except (OSError, ValueError) as exc:
                raise FailedPrecondition(f"cannot read {path / TLS_CERT}: {exc}") from exc
            infos.append(self._info(path, kind, cert))
        return infos

    def _bundle_dirs(self) -> Iterator[tuple[str, Path]]:
        if (self.directory / "controller" / TLS_CERT).is_file():
            yield "controller", self.directory / "controller"
        for kind, parent in (("agent", "agents"), ("user", "users")):
            root = self.directory / parent
            if root.is_dir():
                for path in sorted(root.iterdir()):
                    if (path / TLS_CERT).is_file():
                        yield kind, path

    def _info(self, path: Path, kind: str, cert: x509.Certificate) -> BundleInfo:
        try:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            san_names = tuple(str(v.value) for v in sans)
        except x509.ExtensionNotFound:
            san_names = ()
        ous = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        return BundleInfo(
            path=path,
            kind=kind,
            name=_cn(cert),
            role=str(ous[0].value) if ous else "",
            sans=san_names,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            serial=cert.serial_number,
            issuer=_cn(cert, issuer=True),
            signed_by_current_ca=_signed_by(cert, self.ca_cert),
        )


# -- helpers ----------------------------------------------------------------------------------


def _new_ca(common_name: str, days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    if days <= 0:
        raise InvalidArgument(f"days must be positive, not {days}")
    if not common_name or any(c in common_name for c in ',=+"\\<>;'):
        raise InvalidArgument(f"invalid CA name {common_name!r}")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        # The CA signs leaves only: no intermediate CAs below it.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _subject(name: str, role: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )


def _cn(cert: x509.Certificate, *, issuer: bool = False) -> str:
    attrs = (cert.issuer if issuer else cert.subject).get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _check_name(name: str, what: str) -> None:
    # A bundle directory is named after it, and it is a CN: no path separators, no DN syntax.
    if not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"invalid {what} {name!r}: 1 to 64 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or a digit"
        )


def _check_host(host: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        labels = host.rstrip(".").split(".")
        if not host or len(host) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
            raise InvalidArgument(f"invalid host {host!r}: an IP address or a DNS name") from None


def _san_entries(sans: Sequence[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for san in dict.fromkeys(sans):  # in order, without duplicates
        _check_host(san)
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            entries.append(x509.DNSName(san))
    return entries


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certs_pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _make_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)  # mkdir's mode is filtered by the umask; an existing directory is tightened


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` atomically: a reader sees the old content or the new one, never a part.
    The temporary file has its final mode from the start, so a key is never readable by others."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
