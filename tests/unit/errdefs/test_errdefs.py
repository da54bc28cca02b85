"""The three error translations map exactly as documented, and chital.errdefs needs no gRPC."""

from __future__ import annotations

import errno
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from chital import errdefs
from chital.errdefs import Code
from chital.errdefs.grpc import (
    ErrorInterceptor,
    from_grpc_code,
    from_grpc_status,
    to_grpc_code,
    to_grpc_status,
)

ERRNO_TABLE = {
    errno.EINVAL: errdefs.InvalidArgument,
    errno.E2BIG: errdefs.InvalidArgument,
    errno.EFAULT: errdefs.InvalidArgument,
    errno.ENAMETOOLONG: errdefs.InvalidArgument,
    errno.ENOTDIR: errdefs.InvalidArgument,
    errno.EISDIR: errdefs.InvalidArgument,
    errno.ENOEXEC: errdefs.InvalidArgument,
    errno.ELOOP: errdefs.InvalidArgument,
    errno.ENOENT: errdefs.NotFound,
    errno.ESRCH: errdefs.NotFound,
    errno.EEXIST: errdefs.AlreadyExists,
    errno.EBUSY: errdefs.FailedPrecondition,
    errno.ENOTEMPTY: errdefs.FailedPrecondition,
    errno.EALREADY: errdefs.FailedPrecondition,
    errno.ETXTBSY: errdefs.FailedPrecondition,
    errno.EPERM: errdefs.PermissionDenied,
    errno.EACCES: errdefs.PermissionDenied,
    errno.ENOSPC: errdefs.ResourceExhausted,
    errno.ENOMEM: errdefs.ResourceExhausted,
    errno.EMFILE: errdefs.ResourceExhausted,
    errno.ENFILE: errdefs.ResourceExhausted,
    errno.EAGAIN: errdefs.Unavailable,
    errno.ENODEV: errdefs.Unavailable,
    errno.ENXIO: errdefs.Unavailable,
    errno.ENOTTY: errdefs.Unimplemented,
    errno.ENOSYS: errdefs.Unimplemented,
    errno.EOPNOTSUPP: errdefs.Unimplemented,
    errno.ETIMEDOUT: errdefs.DeadlineExceeded,
}

CLASS_CODES = {
    errdefs.NotFound: Code.NOT_FOUND,
    errdefs.AlreadyExists: Code.ALREADY_EXISTS,
    errdefs.InvalidArgument: Code.INVALID_ARGUMENT,
    errdefs.FailedPrecondition: Code.FAILED_PRECONDITION,
    errdefs.PermissionDenied: Code.PERMISSION_DENIED,
    errdefs.Unauthenticated: Code.UNAUTHENTICATED,
    errdefs.ResourceExhausted: Code.RESOURCE_EXHAUSTED,
    errdefs.Unavailable: Code.UNAVAILABLE,
    errdefs.Unimplemented: Code.UNIMPLEMENTED,
    errdefs.DeadlineExceeded: Code.DEADLINE_EXCEEDED,
    errdefs.OutOfRange: Code.OUT_OF_RANGE,
    errdefs.Internal: Code.INTERNAL,
}


def test_importing_errdefs_does_not_import_grpc() -> None:
    # A fresh interpreter: this one has imported grpc already.
    code = (
        "import sys, chital.errdefs as e\n"
        "e.from_errno(2, 'x'); e.from_code(e.Code.NOT_FOUND, 'x'); e.code_of(ValueError())\n"
        "print(sorted(m for m in sys.modules if m == 'grpc' or m.startswith(('grpc.', '_grpc'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_codes_are_grpcs_names_and_numbers() -> None:
    assert [c.name for c in Code] == [s.name for s in grpc.StatusCode]
    for code in Code:
        status = to_grpc_status(code)
        assert (status.name, status.value[0]) == (code.name, code.value)
        assert from_grpc_status(status) is code


@pytest.mark.parametrize(("err", "cls"), sorted(ERRNO_TABLE.items()))
def test_errno_maps_to_documented_class(err: int, cls: type[errdefs.ChitalError]) -> None:
    exc = errdefs.from_errno(err, "ioctl CREATE")
    assert type(exc) is cls
    assert str(exc).startswith("ioctl CREATE: ")
    assert errno.errorcode[err] in str(exc)


def test_unknown_errno_is_internal() -> None:
    assert type(errdefs.from_errno(errno.EXDEV, "x")) is errdefs.Internal


def test_every_class_has_its_code_and_round_trips() -> None:
    assert set(CLASS_CODES) == set(errdefs.ERROR_CLASSES)
    for cls, code in CLASS_CODES.items():
        assert cls.code is code
        assert errdefs.code_of(cls("m")) is code
        assert to_grpc_code(cls("m")) is grpc.StatusCode[code.name]
        back = from_grpc_code(grpc.StatusCode[code.name], "m")
        assert type(back) is cls
        assert back.message == "m"
        assert type(errdefs.from_code(code, "m")) is cls


@pytest.mark.parametrize("code", list(grpc.StatusCode))
def test_every_status_code_gives_a_typed_exception(code: grpc.StatusCode) -> None:
    if code is grpc.StatusCode.OK:
        return
    exc = from_grpc_code(code, "")
    assert isinstance(exc, errdefs.ChitalError)
    assert exc.message  # never an empty message
    assert type(exc) is type(errdefs.from_code(from_grpc_status(code), ""))


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (grpc.StatusCode.CANCELLED, errdefs.Unavailable),
        (grpc.StatusCode.ABORTED, errdefs.FailedPrecondition),
        (grpc.StatusCode.DATA_LOSS, errdefs.Internal),
        (grpc.StatusCode.UNKNOWN, errdefs.Internal),
    ],
)
def test_transport_codes_map_to_nearest_class(
    status: grpc.StatusCode, cls: type[errdefs.ChitalError]
) -> None:
    assert type(from_grpc_code(status, "m")) is cls


def test_unauthenticated_is_a_permission_denied() -> None:
    """One class for the status, whoever raises or receives it (a controller's auth, the SDK), and
    code that catches PermissionDenied catches it too."""
    exc = from_grpc_code(grpc.StatusCode.UNAUTHENTICATED, "token expired")
    assert type(exc) is errdefs.Unauthenticated and isinstance(exc, errdefs.PermissionDenied)
    assert to_grpc_code(errdefs.Unauthenticated("x")) is grpc.StatusCode.UNAUTHENTICATED
    assert str(from_grpc_code(grpc.StatusCode.UNAUTHENTICATED, ""))  # never an empty message


def test_foreign_exceptions_are_internal() -> None:
    assert errdefs.code_of(ValueError("x")) is Code.INTERNAL
    assert to_grpc_code(ValueError("x")) is grpc.StatusCode.INTERNAL
    assert to_grpc_code(KeyError("x")) is grpc.StatusCode.INTERNAL


def test_old_import_paths_still_work_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning, match=r"chital\.errdefs\.grpc\.to_grpc_code"):
        from chital.errdefs import to_grpc_code as old_to  # noqa: PLC0415  (the statement is the test)
    with pytest.warns(DeprecationWarning, match=r"chital\.errdefs\.grpc\.from_grpc_code"):
        from chital.errdefs import from_grpc_code as old_from  # noqa: PLC0415
    assert (old_to, old_from) == (to_grpc_code, from_grpc_code)
    with pytest.raises(AttributeError):
        errdefs.no_such_name  # noqa: B018


# -- The interceptor: no handler can leak UNKNOWN ------------------------------------------------

RAISES: list[BaseException] = [
    *(cls("boom") for cls in errdefs.ERROR_CLASSES),
    ValueError("bad"),
    KeyError("k"),
    RuntimeError("r"),
    ZeroDivisionError(),
    OSError(errno.EIO, "io"),
]


def _expected(exc: BaseException) -> grpc.StatusCode:
    return to_grpc_status(exc.code) if isinstance(exc, errdefs.ChitalError) else grpc.StatusCode.INTERNAL


class _Handlers(grpc.GenericRpcHandler):
    def __init__(self) -> None:
        self.to_raise: BaseException = ValueError()

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            raise self.to_raise

        def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
            yield b"first"
            raise self.to_raise

        def aborting(request: bytes, context: grpc.ServicerContext) -> bytes:
            context.abort(grpc.StatusCode.OUT_OF_RANGE, "explicit")
            return b""

        method = handler_call_details.method
        if method == "/t.T/Unary":
            return grpc.unary_unary_rpc_method_handler(unary)
        if method == "/t.T/Stream":
            return grpc.unary_stream_rpc_method_handler(stream)
        if method == "/t.T/Abort":
            return grpc.unary_unary_rpc_method_handler(aborting)
        return None


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[_Handlers, grpc.Channel]]:
    handlers = _Handlers()
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[ErrorInterceptor()])
    srv.add_generic_rpc_handlers((handlers,))
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield handlers, channel
    finally:
        channel.close()
        srv.stop(grace=None)


@pytest.mark.parametrize("exc", RAISES, ids=lambda e: type(e).__name__)
def test_unary_handler_exceptions_map(server: tuple[_Handlers, Any], exc: BaseException) -> None:
    handlers, channel = server
    handlers.to_raise = exc
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary("/t.T/Unary")(b"", timeout=5)
    assert info.value.code() is _expected(exc)
    assert info.value.code() is not grpc.StatusCode.UNKNOWN


@pytest.mark.parametrize("exc", RAISES, ids=lambda e: type(e).__name__)
def test_stream_handler_exceptions_map(server: tuple[_Handlers, Any], exc: BaseException) -> None:
    handlers, channel = server
    handlers.to_raise = exc
    call = channel.unary_stream("/t.T/Stream")(b"", timeout=5)
    with pytest.raises(grpc.RpcError) as info:
        assert next(call) == b"first"
        next(call)
    assert info.value.code() is _expected(exc)


def test_explicit_abort_passes_through(server: tuple[_Handlers, Any]) -> None:
    _, channel = server
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary("/t.T/Abort")(b"", timeout=5)
    assert info.value.code() is grpc.StatusCode.OUT_OF_RANGE
    assert info.value.details() == "explicit"


def test_out_of_range_is_an_invalid_argument_with_its_compact_revision() -> None:
    exc = errdefs.OutOfRange("revision 3 has been compacted", compact_revision=41)
    assert isinstance(exc, errdefs.InvalidArgument)
    assert exc.metadata() == {errdefs.COMPACT_REVISION_KEY: "41"}
    back = from_grpc_code(grpc.StatusCode.OUT_OF_RANGE, "m", [(errdefs.COMPACT_REVISION_KEY, "41")])
    assert type(back) is errdefs.OutOfRange
    assert back.compact_revision == 41  # type: ignore[attr-defined]
    # Without the metadata (another server, a proxy) it is still an OutOfRange, revision unknown.
    bare = from_grpc_code(grpc.StatusCode.OUT_OF_RANGE, "m", [(errdefs.COMPACT_REVISION_KEY, "x")])
    assert type(bare) is errdefs.OutOfRange and bare.compact_revision == 0  # type: ignore[attr-defined]
    assert errdefs.NotFound("n").metadata() == {}


def test_the_interceptor_sends_an_errors_metadata_as_trailers(server: tuple[_Handlers, Any]) -> None:
    handlers, channel = server
    handlers.to_raise = errdefs.OutOfRange("compacted", compact_revision=7)
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary("/t.T/Unary")(b"", timeout=5)
    assert info.value.code() is grpc.StatusCode.OUT_OF_RANGE
    trailers = dict(info.value.trailing_metadata() or ())
    assert trailers[errdefs.COMPACT_REVISION_KEY] == "7"
    call = channel.unary_stream("/t.T/Stream")(b"", timeout=5)
    with pytest.raises(grpc.RpcError) as info:
        assert next(call) == b"first"
        next(call)
    assert dict(info.value.trailing_metadata() or ())[errdefs.COMPACT_REVISION_KEY] == "7"
