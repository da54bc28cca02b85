"""Structured logs for the daemons: ``text``, ``json`` or ``logfmt``, with the request's ids.

Every record carries, where known, the ``request_id`` of the RPC being served (the request's
``request_id`` field, else its ``x-request-id`` metadata) and the ``container`` it is about (the
request's ``container_uid``, ``container``, or the ``uid`` of a container request). The server
interceptor :class:`LogContextInterceptor` sets both in context variables for the duration of
each RPC, so any ``logging`` call made while serving it is labelled without passing them around;
:func:`log_context` does the same for other work (a background task acting for a request).

One line per record::

    text:    2026-11-30T06:40:01.123Z INFO chital.controller.containers: placed [request_id=r1 container=c9]
    json:    {"time": "2026-11-30T06:40:01.123Z", "level": "info", "logger": "chital.controller...",
              "msg": "placed ...", "request_id": "r1", "container": "c9"}
    logfmt:  time=2026-11-30T06:40:01.123Z level=info logger=chital.controller.containers msg="placed ..."
             request_id=r1 container=c9

Exceptions logged with ``exc_info`` add ``exc`` (the traceback) to json and logfmt, and the
traceback below the line in text.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any, NamedTuple

import grpc

from chital.errdefs.grpc import rewrap_handler

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "LogContextInterceptor",
    "RequestIdClientInterceptor",
    "configure_logging",
    "container_of",
    "current_container",
    "current_request_id",
    "log_context",
]

LOG_FORMATS = ("text", "json", "logfmt")
LOG_LEVELS = ("debug", "info", "warning", "error")
#: Longest request id kept in logs; longer ones are cut (a client may send anything).
MAX_ID_LENGTH = 128

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("chital_request_id", default="")
_container: contextvars.ContextVar[str] = contextvars.ContextVar("chital_container", default="")
_CONTEXT_FIELDS = ("request_id", "container")


def current_request_id() -> str:
    """The request id of the RPC being served on this thread ("" outside one)."""
    return _request_id.get()


def current_container() -> str:
    """The container the RPC being served is about ("" when none or unknown)."""
    return _container.get()


@contextlib.contextmanager
def log_context(*, request_id: str | None = None, container: str | None = None) -> Iterator[None]:
    """Label the records logged inside the block (None keeps the current value)."""
    tokens = []
    if request_id is not None:
        tokens.append((_request_id, _request_id.set(request_id[:MAX_ID_LENGTH])))
    if container is not None:
        tokens.append((_container, _container.set(container[:MAX_ID_LENGTH])))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class _ContextFilter(logging.Filter):
    """Copies the context variables onto each record (unless ``extra=`` set them already)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):
            record.request_id = _request_id.get()
        if not getattr(record, "container", ""):
            record.container = _container.get()
        return True


def _timestamp(record: logging.LogRecord) -> str:
    seconds = int(record.created)
    millis = int((record.created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, str]:
    out = {
        "time": _timestamp(record),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    for name in _CONTEXT_FIELDS:
        value = getattr(record, name, "")
        if value:
            out[name] = str(value)
    return out


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: MESSAGE [request_id=... container=...]`` for people."""

    def format(self, record: logging.LogRecord) -> str:
        f = _fields(record)
        line = f"{f['time']} {record.levelname} {f['logger']}: {f['msg']}"
        labels = " ".join(f"{name}={f[name]}" for name in _CONTEXT_FIELDS if name in f)
        if labels:
            line += f" [{labels}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JSONFormatter(logging.Formatter):
    """One JSON object per line (for Loki, Elasticsearch, journald's MESSAGE, jq)."""

    def format(self, record: logging.LogRecord) -> str:
        f: dict[str, Any] = _fields(record)
        if record.exc_info:
            f["exc"] = self.formatException(record.exc_info)
        return json.dumps(f, ensure_ascii=False)


def _logfmt_value(value: str) -> str:
    if value and not any(c in value for c in ' ="\\\n\t') and value.isprintable():
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    """``key=value`` pairs, quoted where needed (Prometheus' and Grafana's tools read it)."""

    def format(self, record: logging.LogRecord) -> str:
        f = _fields(record)
        if record.exc_info:
            f["exc"] = self.formatException(record.exc_info)
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in f.items())


_FORMATTERS: dict[str, type[logging.Formatter]] = {
    "text": TextFormatter,
    "json": JSONFormatter,
    "logfmt": LogfmtFormatter,
}


def configure_logging(level: str = "info", fmt: str = "text", stream: IO[str] | None = None) -> None:
    """Send every record at ``level`` or above to ``stream`` (stderr) in format ``fmt``.

    Replaces the root logger's handlers, so calling it twice does not duplicate lines.
    """
    if fmt not in _FORMATTERS:
        raise ValueError(f"log format {fmt!r}: expected one of {', '.join(LOG_FORMATS)}")
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"log level {level!r}: expected one of {', '.join(LOG_LEVELS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(_FORMATTERS[fmt]())
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())


def container_of(request: Any) -> str:
    """The container a request is about: ``container_uid``, ``container``, or a container's ``uid``."""
    descriptor = getattr(request, "DESCRIPTOR", None)
    if descriptor is None:
        return ""
    fields = descriptor.fields_by_name
    for name in ("container_uid", "container"):
        field = fields.get(name)
        if field is not None and field.type == field.TYPE_STRING:
            return str(getattr(request, name))
    if "uid" in fields and "Container" in descriptor.name:
        return str(request.uid)
    return ""


def _request_id_of(request: Any, metadata: Any) -> str:
    descriptor = getattr(request, "DESCRIPTOR", None)
    if descriptor is not None and "request_id" in descriptor.fields_by_name and request.request_id:
        return str(request.request_id)
    for key, value in metadata or ():
        if key == "x-request-id" and isinstance(value, str):
            return value
    return ""


class LogContextInterceptor(grpc.ServerInterceptor):
    """Sets the log context (request id, container) for the duration of each RPC.

    Put it first among the server's interceptors, so that the others' records carry the ids too.
    Streams that the client sends (client-streaming) have no single request: only the metadata's
    ``x-request-id`` is used for them.
    """

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        metadata = handler_call_details.invocation_metadata

        def ids(request: Any) -> tuple[str, str]:
            if isinstance(request, Iterator):
                return _request_id_of(None, metadata), ""
            return _request_id_of(request, metadata), container_of(request)

        def wrap_unary(fn: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                request_id, container = ids(request)
                with log_context(request_id=request_id, container=container):
                    return fn(request, context)

            return call

        def wrap_stream(fn: Callable[[Any, grpc.ServicerContext], Iterator[Any]]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                request_id, container = ids(request)
                responses = fn(request, context)
                # Set around each step only: a generator may be resumed (and closed) from another
                # context, where a token taken here could not be reset.
                try:
                    while True:
                        with log_context(request_id=request_id, container=container):
                            try:
                                response = next(responses)
                            except StopIteration:
                                return
                        yield response
                finally:
                    close = getattr(responses, "close", None)
                    if close is not None:
                        close()

            return call

        return rewrap_handler(handler, wrap_unary, wrap_stream)


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _Details(_CallDetails, grpc.ClientCallDetails):
    pass


class RequestIdClientInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Passes the request id being served on to the calls made while serving it (the controller's
    calls to agents): ``x-request-id`` metadata, unless the call sets one itself.

    ``grpc.intercept_channel(channel, RequestIdClientInterceptor())``: the agent's records of the
    work a client's request caused then carry that request's id.
    """

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        request_id = _request_id.get()
        metadata = list(details.metadata or ())
        if not request_id or any(key == "x-request-id" for key, _ in metadata):
            return details
        metadata.append(("x-request-id", request_id))
        return _Details(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)
