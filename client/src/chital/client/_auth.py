"""The bearer token on every call: a client interceptor, so it works on plaintext loopback channels
as well as TLS ones (gRPC's call credentials refuse insecure channels)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

AUTHORIZATION = "authorization"


def check_token(token: str) -> str:
    """``token`` without surrounding whitespace; ValueError when it cannot travel as a header."""
    token = token.strip()
    if not token:
        raise ValueError("token is empty")
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise ValueError("token must be printable ASCII without spaces (a pasted line break or quote?)")
    return token


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, base: grpc.ClientCallDetails, metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


class BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to the metadata of every call, streams included."""

    def __init__(self, token: str) -> None:
        self._header = (AUTHORIZATION, f"Bearer {check_token(token)}")

    def __repr__(self) -> str:
        """Never shows the token."""
        return "BearerToken(<hidden>)"

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        kept = tuple((k, v) for k, v in (details.metadata or ()) if k.lower() != AUTHORIZATION)
        return _CallDetails(details, (*kept, self._header))

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        """Call with the token."""
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        """Call with the token."""
        return continuation(self._details(details), request)

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: Any, requests: Iterator[Any]
    ) -> Any:
        """Call with the token."""
        return continuation(self._details(details), requests)

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: Any, requests: Iterator[Any]
    ) -> Any:
        """Call with the token."""
        return continuation(self._details(details), requests)
