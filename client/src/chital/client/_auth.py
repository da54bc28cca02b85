"""The bearer token on every call: per-call metadata, so it works on plaintext loopback channels as
well as TLS ones (gRPC's call credentials refuse insecure channels), on both clients."""

from __future__ import annotations

AUTHORIZATION = "authorization"


def check_token(token: str) -> str:
    """``token`` without surrounding whitespace; ValueError when it cannot travel as a header."""
    token = token.strip()
    if not token:
        raise ValueError("token is empty")
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise ValueError("token must be printable ASCII without spaces (a pasted line break or quote?)")
    return token
