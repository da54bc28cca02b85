"""Who may call the agent: only the controller.

With ``--tls-dir`` the agent's port requires a client certificate signed by the fleet CA (the TLS
handshake fails without one), and :class:`ControllerOnlyInterceptor` then lets through only peers
whose certificate carries the role ``controller`` (the subject's OU, see :mod:`chital.security.pki`).
Every other peer, an agent's or a user's certificate included, gets UNAUTHENTICATED before any
handler runs. The interceptor covers every service of the port: AgentService, health and
reflection alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from chital.errdefs.grpc import rewrap_handler
from chital.security.tls import peer_from_context

__all__ = ["CONTROLLER_ROLE", "ControllerOnlyInterceptor"]

log = logging.getLogger("chital.agent.auth")

CONTROLLER_ROLE = "controller"


def _refusal(context: grpc.ServicerContext) -> str | None:
    """None when the peer is the controller, else why it is refused."""
    peer = peer_from_context(context)
    if peer is None:
        return "no client certificate: only the controller may call this agent"
    if peer.role != CONTROLLER_ROLE:
        return f"certificate {peer.name!r} has role {peer.role!r}: only the controller may call this agent"
    return None


class ControllerOnlyInterceptor(grpc.ServerInterceptor):
    """UNAUTHENTICATED for every call whose peer certificate is not the controller's."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        def deny(context: grpc.ServicerContext) -> None:
            reason = _refusal(context)
            if reason is not None:
                log.warning("refused %s from %s: %s", method, context.peer(), reason)
                context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

        def wrap_unary(fn: Callable[..., Any]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                deny(context)
                return fn(request, context)

            return call

        def wrap_stream(fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
            def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                deny(context)
                yield from fn(request, context)

            return call

        return rewrap_handler(handler, wrap_unary, wrap_stream)
