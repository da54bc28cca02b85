"""The ``chital`` command-line tool. ``main(argv)`` runs it in-process and returns the exit status;
``cli`` is its click command group."""

import os

# gRPC's core logs a failed TLS handshake at INFO on stderr, beside the CLI's own one-line error:
# keep its errors only. This must happen before grpc is first imported; GRPC_VERBOSITY still wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from ._app import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    cli,
    main,
)

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_TIMEOUT", "EXIT_USAGE", "cli", "main"]
