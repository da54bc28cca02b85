"""The SDK's exception tree: the closed set of ``chital.errdefs`` classes, and the one place where a
gRPC status becomes one of them."""

from __future__ import annotations

import re

import grpc

from chital.errdefs import (
    AlreadyExists,
    ChitalError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from chital.errdefs.grpc import from_grpc_code

__all__ = [
    "AlreadyExists",
    "ChitalError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "error_from_rpc",
    "status_code",
    "tls_failure",
]


def status_code(exc: grpc.RpcError) -> grpc.StatusCode:
    """The status code of a failed call (UNKNOWN when the error carries none)."""
    code = getattr(exc, "code", None)
    if callable(code):
        value = code()
        if isinstance(value, grpc.StatusCode):
            return value
    return grpc.StatusCode.UNKNOWN


def _details(exc: grpc.RpcError) -> str:
    details = getattr(exc, "details", None)
    message = details() if callable(details) else ""
    # Transport errors carry multi-line details; keep one line so CLIs print one line.
    return " ".join(str(message or "").split())


_VERIFY_FAILED = re.compile(r"CERTIFICATE_VERIFY_FAILED: ?([^:]*)")
_UNKNOWN_AUTHORITY = "check the CA (certificate signed by an unknown authority?)"


_HOSTNAME_MISMATCH = (
    "TLS handshake failed: the controller's certificate does not name the address dialled "
    "(check the address, or the certificate's SANs)"
)
_PLAINTEXT_SERVER = "TLS handshake failed: the controller does not speak TLS (is it serving plaintext?)"
_CLIENT_CERT_REFUSED = (
    "TLS handshake failed: the controller refused the client certificate "
    "(missing, expired, or issued by another CA)"
)
# (substrings of gRPC's details, what they mean), first match wins.
_TLS_FAILURES = (
    (("Hostname Verification Check failed", "not in peer certificate"), _HOSTNAME_MISMATCH),
    (("WRONG_VERSION_NUMBER",), _PLAINTEXT_SERVER),
    (("ALERT_UNKNOWN_CA", "ALERT_BAD_CERTIFICATE", "CERTIFICATE_REQUIRED"), _CLIENT_CERT_REFUSED),
)


#: gRPC's words for a connection that broke while the handshake read or wrote (reset, closed,
#: or cut because the peer never answered: a frozen or restarting controller). No certificate
#: was judged; the next controller may well answer.
_HANDSHAKE_TRANSPORT = ("Handshake read failed", "Handshake write failed")


def tls_failure(details: str) -> str | None:
    """What went wrong in a failed TLS handshake, from the details of an UNAVAILABLE status (gRPC
    reports the handshake inside them); ``None`` when the failure was not a TLS one."""
    for needles, meaning in _TLS_FAILURES:
        if any(needle in details for needle in needles):
            return meaning
    match = _VERIFY_FAILED.search(details)
    if match:
        reason = match.group(1).strip()
        if "expired" in reason or "not yet valid" in reason:
            return f"TLS handshake failed: the controller's certificate is not valid now ({reason})"
        return f"TLS handshake failed: {_UNKNOWN_AUTHORITY}" + (f": {reason}" if reason else "")
    if any(needle in details for needle in _HANDSHAKE_TRANSPORT):
        return None  # the connection broke during the handshake: the peer is away, not misconfigured
    if "Tls handshake failed" in details or "SSL_ERROR" in details or "handshake" in details.lower():
        return f"TLS handshake failed: {details}"
    return None


def is_tls_failure(exc: grpc.RpcError) -> bool:
    """Whether a call failed in the TLS handshake (which no retry cures)."""
    return status_code(exc) is grpc.StatusCode.UNAVAILABLE and tls_failure(_details(exc)) is not None


def error_from_rpc(exc: grpc.RpcError) -> ChitalError:
    """The typed exception for a failed call; the caller raises it ``from exc``."""
    message = _details(exc)
    code = status_code(exc)
    if code is grpc.StatusCode.UNAVAILABLE:
        message = tls_failure(message) or message
    return from_grpc_code(code, message, _trailers(exc))


def _trailers(exc: grpc.RpcError) -> tuple[tuple[str, object], ...]:
    """The failed call's trailing metadata (error details such as OutOfRange's compact revision)."""
    trailing = getattr(exc, "trailing_metadata", None)
    try:
        metadata = trailing() if callable(trailing) else None
    except Exception:  # noqa: BLE001 - an error without a call behind it (a test double) has none
        return ()
    return tuple((str(k), v) for k, v in metadata or ())
