"""Who may call what: the controller's one authentication and authorization interceptor.

Every call to the controller's API passes :class:`AuthInterceptor`:

1. **Who.** A verified client certificate of the fleet CA (only on the ``--mtls-listen`` port,
   the only port that asks for one) names the caller by its CN, with its OU as the role. Anywhere
   else the caller sends ``authorization: Bearer <token>`` metadata and the token's row in SQL
   names it (see :mod:`chital.controller.tokens`). Nothing else authenticates: no credentials, an
   unknown, expired or revoked token, or a certificate of a service role (agent, controller) are
   ``UNAUTHENTICATED``.
2. **May they.** :data:`METHOD_ROLES` maps every full method name to the weakest role that may
   call it (admin > operator > viewer). A weaker role is ``PERMISSION_DENIED``; a method missing
   from the table is denied to everyone. The health and reflection services are open.
3. **Audit.** Calls of methods marked mutating are written to the audit log after the handler
   with their outcome, denials included. Unauthenticated calls are logged, not written: anyone
   can make them, and they must not be able to fill the database.

Order with the other server interceptors: ``[RpcMetricsInterceptor, AuthInterceptor,
ErrorInterceptor]``. Metrics stays outermost and sees every final status (this interceptor's
denials included); the error interceptor is inside, so the audit records the status it maps an
exception to.

Handlers that need the caller (WhoAmI; CreateContainer, whose sandbox relaxations are admin-only
although the method is an operator's, see :func:`chital.controller.validation.check_sandbox_role`)
read :func:`current_principal`, set for the duration of a unary handler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NoReturn

import grpc
from google.protobuf.message import Message
from sqlalchemy.exc import OperationalError

from chital.controller.tokens import ROLES, AuditLog, InvalidToken, Tokens
from chital.errdefs import Unauthenticated, code_of
from chital.errdefs.grpc import client_went_away, rewrap_handler
from chital.security.tls import peer_from_context

__all__ = [
    "METHOD_ROLES",
    "OPEN_SERVICES",
    "ROLES",
    "AuthInterceptor",
    "Principal",
    "Rule",
    "current_principal",
    "role_allows",
    "roles_table_markdown",
]

log = logging.getLogger("chital.controller.auth")


@dataclass(frozen=True)
class Rule:
    """The weakest role that may call a method, and whether the method changes anything (audited)."""

    role: str
    mutating: bool = False


_CONTAINER = "/chital.api.container.v1.ContainerService/"
_HOST = "/chital.api.host.v1.HostService/"
_ADMIN = "/chital.api.admin.v1.AdminService/"
_ROLLOUT = "/chital.api.rollout.v1.RolloutService/"

#: Full gRPC method name -> rule. docs/auth.md holds the same table (a unit test compares them).
METHOD_ROLES: Mapping[str, Rule] = MappingProxyType(
    {
        _CONTAINER + "CreateContainer": Rule("operator", mutating=True),
        _CONTAINER + "GetContainer": Rule("viewer"),
        _CONTAINER + "ListContainers": Rule("viewer"),
        _CONTAINER + "StopContainer": Rule("operator", mutating=True),
        _CONTAINER + "DeleteContainer": Rule("operator", mutating=True),
        _CONTAINER + "Exec": Rule("operator", mutating=True),
        _CONTAINER + "GetProcess": Rule("viewer"),
        _CONTAINER + "ListProcesses": Rule("viewer"),
        _CONTAINER + "WaitProcess": Rule("viewer"),
        _CONTAINER + "SignalProcess": Rule("operator", mutating=True),
        _CONTAINER + "StreamLogs": Rule("viewer"),
        _CONTAINER + "Watch": Rule("viewer"),
        _CONTAINER + "GetContainerStats": Rule("viewer"),
        _HOST + "RegisterHost": Rule("admin", mutating=True),
        _HOST + "ListHosts": Rule("viewer"),
        _HOST + "GetHost": Rule("viewer"),
        _HOST + "CordonHost": Rule("admin", mutating=True),
        _HOST + "UncordonHost": Rule("admin", mutating=True),
        _HOST + "DrainHost": Rule("admin", mutating=True),
        _HOST + "RemoveHost": Rule("admin", mutating=True),
        _ADMIN + "CreateToken": Rule("admin", mutating=True),
        _ADMIN + "ListTokens": Rule("admin"),
        _ADMIN + "RevokeToken": Rule("admin", mutating=True),
        _ADMIN + "ListAuditLog": Rule("admin"),
        # Anyone authenticated may ask who they are (`chital whoami`).
        _ADMIN + "WhoAmI": Rule("viewer"),
        # And what they talk to: version, API packages, database kind (`chital --version`).
        _ADMIN + "GetServerInfo": Rule("viewer"),
        # Rollouts run playbooks as root on the fleet: admin only, reading them too (the
        # events carry task output).
        _ROLLOUT + "StartRollout": Rule("admin", mutating=True),
        _ROLLOUT + "GetRollout": Rule("admin"),
        _ROLLOUT + "ListRollouts": Rule("admin"),
        _ROLLOUT + "WatchRollout": Rule("admin"),
        _ROLLOUT + "CancelRollout": Rule("admin", mutating=True),
    }
)

#: Served without authentication: load balancers and grpcurl need them before any credentials.
OPEN_SERVICES: frozenset[str] = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)

# Request fields that name what a call acts on, in order of preference (for the audit log).
_TARGET_FIELDS = ("container", "process_uid", "host", "address", "id", "name", "playbook")
REQUEST_ID_METADATA = "x-request-id"


def role_allows(role: str, needed: str) -> bool:
    """Whether ``role`` is ``needed`` or stronger."""
    return role in ROLES and needed in ROLES and ROLES.index(role) <= ROLES.index(needed)


def roles_table_markdown(method_roles: Mapping[str, Rule] = METHOD_ROLES) -> str:
    """The table of docs/auth.md, from :data:`METHOD_ROLES` (a unit test keeps them equal)."""
    lines = ["| Service | Method | Least role | Audited |", "|---|---|---|---|"]
    for method, rule in method_roles.items():
        service, _, name = method.lstrip("/").rpartition("/")
        lines.append(f"| `{service}` | `{name}` | {rule.role} | {'yes' if rule.mutating else 'no'} |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    name: str  # the token's name or the certificate's CN
    role: str  # admin, operator or viewer
    auth_method: str  # "token" or "certificate"
    token_id: str = ""

    @property
    def id(self) -> str:
        """How the audit log names the caller: ``token:<name>/<id>`` or ``cert:<CN>``."""
        if self.auth_method == "token":
            return f"token:{self.name}/{self.token_id}"
        return f"cert:{self.name}"


_current: ContextVar[Principal | None] = ContextVar("chital_principal", default=None)


def current_principal() -> Principal | None:
    """The caller of the unary handler running in this thread (None outside one)."""
    return _current.get()


def _short(method: str) -> str:
    """``/chital.api.host.v1.HostService/RegisterHost`` -> ``HostService/RegisterHost``."""
    service, _, name = method.lstrip("/").rpartition("/")
    return f"{service.rpartition('.')[2]}/{name}"


def _metadata(context: grpc.ServicerContext, key: str) -> list[str]:
    values = []
    for name, value in context.invocation_metadata() or ():
        if name == key and isinstance(value, str):
            values.append(value)
    return values


def _field(request: Any, name: str) -> str:
    if not isinstance(request, Message) or name not in request.DESCRIPTOR.fields_by_name:
        return ""
    value = getattr(request, name)
    return value if isinstance(value, str) else ""


def _target(request: Any) -> str:
    for name in _TARGET_FIELDS:
        value = _field(request, name)
        if value:
            return value
    return ""


def _request_id(request: Any, context: grpc.ServicerContext) -> str:
    return _field(request, "request_id") or next(iter(_metadata(context, REQUEST_ID_METADATA)), "")


def _outcome(context: grpc.ServicerContext, exc: BaseException | None) -> tuple[str, str]:
    """The final status code name and message of a call."""
    code = context.code()  # type: ignore[attr-defined]  # set by set_code() or abort()
    raw = context.details()  # type: ignore[attr-defined]
    detail = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw or "")
    if isinstance(code, grpc.StatusCode):
        return code.name, detail
    if exc is None:
        return "OK", ""
    if isinstance(exc, GeneratorExit) or client_went_away(context, exc):
        return grpc.StatusCode.CANCELLED.name, "cancelled"
    return code_of(exc).name, detail or type(exc).__name__


class AuthInterceptor(grpc.ServerInterceptor):
    """Authenticates the caller, checks :data:`METHOD_ROLES`, audits mutations."""

    def __init__(
        self, tokens: Tokens, audit: AuditLog, *, method_roles: Mapping[str, Rule] = METHOD_ROLES
    ) -> None:
        self._tokens = tokens
        self._audit = audit
        self._roles = method_roles

    # -- who --------------------------------------------------------------------------------

    def authenticate(self, context: grpc.ServicerContext) -> Principal:
        """The caller; Unauthenticated says why there is none."""
        peer = peer_from_context(context)
        if peer is not None:
            if peer.role not in ROLES:
                raise Unauthenticated(
                    f"a certificate of role {peer.role!r} ({peer.name}) cannot call the API: "
                    f"only {', '.join(ROLES)} certificates can"
                )
            return Principal(peer.name, peer.role, "certificate")
        headers = _metadata(context, "authorization")
        if not headers:
            raise Unauthenticated("no credentials: pass a token or a client certificate")
        if len(headers) > 1:
            raise Unauthenticated("more than one authorization header")
        scheme, _, token = headers[0].strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
        try:
            record = self._tokens.verify(token.strip())
        except InvalidToken as exc:
            raise Unauthenticated(str(exc)) from None
        if record.role not in ROLES:
            raise Unauthenticated("invalid token: unknown role")
        return Principal(record.name, record.role, "token", record.id)

    # -- the interceptor --------------------------------------------------------------------

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        handler = continuation(handler_call_details)
        if handler is None or method.lstrip("/").rpartition("/")[0] in OPEN_SERVICES:
            return handler
        rule = self._roles.get(method)

        def admit(request: Any, context: grpc.ServicerContext) -> Principal:
            """The caller if allowed; otherwise abort the call (and audit a denied mutation)."""
            try:
                principal = self.authenticate(context)
            except Unauthenticated as exc:
                log.info("unauthenticated call of %s from %s: %s", method, context.peer(), exc)
                _abort(context, grpc.StatusCode.UNAUTHENTICATED, str(exc))
            except OperationalError:
                log.exception("cannot verify a token: database error")
                _abort(
                    context, grpc.StatusCode.UNAVAILABLE, "cannot verify the token now: database unavailable"
                )
            except Exception:
                log.exception("cannot authenticate a call of %s", method)
                _abort(context, grpc.StatusCode.INTERNAL, "internal error while authenticating the call")
            if rule is None:
                _abort(
                    context, grpc.StatusCode.PERMISSION_DENIED, f"{_short(method)} is not in the role table"
                )
            if not role_allows(principal.role, rule.role):
                message = f"role {principal.role} may not call {_short(method)} (needs {rule.role})"
                if rule.mutating:
                    self._write(method, principal, request, context, code="PERMISSION_DENIED", detail=message)
                _abort(context, grpc.StatusCode.PERMISSION_DENIED, message)
            return principal

        def wrap_unary(fn: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                principal = admit(request, context)
                token = _current.set(principal)
                try:
                    response = fn(request, context)
                except BaseException as exc:
                    self._audit_outcome(method, rule, principal, request, context, exc=exc)
                    raise
                finally:
                    _current.reset(token)
                self._audit_outcome(method, rule, principal, request, context, exc=None)
                return response

            return call

        def wrap_stream(fn: Callable[[Any, grpc.ServicerContext], Iterator[Any]]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                principal = admit(request, context)
                try:
                    yield from fn(request, context)
                except BaseException as exc:
                    self._audit_outcome(method, rule, principal, request, context, exc=exc)
                    raise
                self._audit_outcome(method, rule, principal, request, context, exc=None)

            return call

        return rewrap_handler(handler, wrap_unary, wrap_stream)

    # -- audit ------------------------------------------------------------------------------

    def _audit_outcome(
        self,
        method: str,
        rule: Rule | None,
        principal: Principal,
        request: Any,
        context: grpc.ServicerContext,
        *,
        exc: BaseException | None,
    ) -> None:
        if rule is not None and rule.mutating:
            code, detail = _outcome(context, exc)
            self._write(method, principal, request, context, code=code, detail=detail)

    def _write(
        self,
        method: str,
        principal: Principal,
        request: Any,
        context: grpc.ServicerContext,
        *,
        code: str,
        detail: str,
    ) -> None:
        """Append to the audit log. A failed write is logged: the call's effect already happened and
        is not undone, and the caller gets the call's own outcome."""
        try:
            self._audit.append(
                principal=principal.id,
                role=principal.role,
                method=method,
                request_id=_request_id(request, context),
                target=_target(request),
                code=code,
                detail=detail,
            )
        except Exception:
            log.exception("audit log write failed (%s by %s: %s)", method, principal.id, code)


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover
