"""gRPC credentials from a bundle, the peer of a call, and where plaintext is allowed.

A bundle (see :mod:`chital.security.pki`) is read by :meth:`TLSFiles.from_dir`. A server either
requires client certificates or never asks for them: gRPC does not request a certificate it does
not require, so a port that authenticates clients by token never sees certificates.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from chital.errdefs import FailedPrecondition

__all__ = [
    "Peer",
    "TLSFiles",
    "channel_credentials",
    "check_listen",
    "is_loopback",
    "peer_from_context",
    "server_credentials",
]


@dataclass(frozen=True)
class TLSFiles:
    """The files of a TLS identity: the CA certificates to trust, and optionally a certificate and
    its key. ``ca`` may hold several certificates (a trust bundle, while the CA is rotated)."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None

    @classmethod
    def from_dir(cls, directory: str | Path) -> TLSFiles:
        """The bundle in ``directory``: ``ca.crt``, and ``tls.crt`` and ``tls.key`` if present."""
        directory = Path(directory)
        cert, key = directory / "tls.crt", directory / "tls.key"
        return cls(
            ca=directory / "ca.crt",
            cert=cert if cert.exists() else None,
            key=key if key.exists() else None,
        )


@dataclass(frozen=True)
class Peer:
    """The identity of a caller that presented a client certificate of the fleet CA."""

    name: str  # the certificate's CN
    role: str  # its OU


def server_credentials(files: TLSFiles, *, require_client_cert: bool) -> grpc.ServerCredentials:
    """Credentials of a server with the bundle's certificate. With ``require_client_cert`` the
    handshake fails unless the client presents a certificate signed by a CA of ``files.ca``;
    without it, no client certificate is requested at all."""
    cert, key = _pair(files, "a server")
    if cert is None or key is None:
        raise FailedPrecondition(f"a server needs a certificate and a key; {_where(files)} has none")
    ca = _read(files.ca) if require_client_cert else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=require_client_cert
    )


def channel_credentials(files: TLSFiles) -> grpc.ChannelCredentials:
    """Credentials of a client that trusts ``files.ca`` and presents the bundle's certificate, if it
    has one. gRPC checks the server's certificate against the host name or IP address dialled."""
    cert, key = _pair(files, "a client")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(files.ca), private_key=key, certificate_chain=cert
    )


def peer_from_context(context: grpc.ServicerContext) -> Peer | None:
    """The verified client certificate's CN and OU, or None when the call has none (plaintext, or
    a port that does not request certificates). A subject without exactly one CN and one OU is
    None too: it is not a certificate this PKI issues."""
    # gRPC maps each key to a list of values (its type stubs say bytes).
    subjects: object = context.auth_context().get("x509_subject")
    if not isinstance(subjects, list) or len(subjects) != 1 or not isinstance(subjects[0], bytes):
        return None
    try:
        # gRPC prints the subject as RFC 2253, most specific first: b"CN=alice,OU=admin,O=chital".
        name = x509.Name.from_rfc4514_string(subjects[0].decode())
    except (UnicodeDecodeError, ValueError):
        return None
    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    ous = name.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if len(cns) != 1 or len(ous) != 1:
        return None
    return Peer(name=str(cns[0].value), role=str(ous[0].value))


def is_loopback(listen: str) -> bool:
    """Whether ``host:port`` only accepts connections from this machine: a loopback address
    (127.0.0.0/8, ::1) or ``localhost``. An empty host (``:7443``) means every interface."""
    host, sep, _port = listen.rpartition(":")
    if not sep:
        return False
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def check_listen(listen: str, *, insecure: bool, tls: TLSFiles | None) -> None:
    """Refuse to serve unless the server is secure, or plaintext was asked for on loopback.

    Raises :class:`~chital.errdefs.FailedPrecondition` when TLS files are missing without
    ``insecure``, when both are given, or when ``insecure`` is asked for on an address other
    machines can reach.
    """
    if insecure:
        if tls is not None:
            raise FailedPrecondition("--insecure and TLS files exclude each other: choose one")
        if not is_loopback(listen):
            raise FailedPrecondition(
                f"plaintext is only allowed on loopback, and {listen} is not a loopback address: "
                "serve TLS (--tls-dir) or listen on 127.0.0.1"
            )
        return
    if tls is None:
        raise FailedPrecondition(
            "no TLS files: pass --tls-dir with a bundle from `chital-controller pki`, "
            "or --insecure to serve plaintext on loopback"
        )
    for what, path in (("CA certificate", tls.ca), ("certificate", tls.cert), ("key", tls.key)):
        if path is None or not path.is_file():
            missing = path or tls.ca.parent / ("tls.crt" if what == "certificate" else "tls.key")
            raise FailedPrecondition(f"TLS {what} missing: {missing}")


def _pair(files: TLSFiles, who: str) -> tuple[bytes | None, bytes | None]:
    if (files.cert is None) != (files.key is None):
        raise FailedPrecondition(f"{who} needs both a certificate and its key, or neither: {_where(files)}")
    if files.cert is None or files.key is None:
        return None, None
    return _read(files.cert), _read(files.key)


def _where(files: TLSFiles) -> str:
    return str(files.cert or files.key or files.ca.parent)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FailedPrecondition(f"cannot read {path}: {exc.strerror}") from exc
