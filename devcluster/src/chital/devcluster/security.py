"""The secure defaults of every dev fleet: its own PKI, mutual TLS to agents, and a bootstrap token.

A fleet (hollow, QEMU, the demo) makes a fleet PKI under its work directory with
:mod:`chital.security.pki`, as an operator would with ``chital-controller pki``:

    <workdir>/pki/ca/{ca.crt,ca.key}
    <workdir>/pki/controller/        serves the API, and is the client certificate agents accept
    <workdir>/pki/agents/<name>/     one bundle per agent, SAN = the address the controller dials

then runs the controller with ``--tls-dir`` and asks it for an admin token
(``chital-controller token create``), and hands clients a :class:`ClientConfig`: the controller's
address, the CA to verify it with, and the token. :meth:`ClientConfig.write` also writes it as a
``chital`` config file (a context), so the CLI and the SDK's ``Client.from_config()`` use it with
``CHITAL_CONFIG=<file>``.

``insecure=True`` (a flag of every fleet, never the default) runs everything in plaintext on
loopback instead; a token is still required by the controller.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chital.security.pki import PKI
from chital.security.tls import TLSFiles

if TYPE_CHECKING:  # the fleets run without the SDK too; it is imported when a client is asked for
    from chital.client import Client

__all__ = ["ClientConfig", "FleetPKI", "create_token"]

BIN = Path(sys.executable).parent
_TOKEN = re.compile(r"\bchital_[0-9a-f]{12}_[A-Za-z0-9_-]{20,}")


@dataclass(frozen=True)
class ClientConfig:
    """How a client reaches a dev fleet's controller: address, CA (None: plaintext) and token."""

    target: str
    token: str = field(repr=False)
    tls: TLSFiles | None = None
    insecure: bool = False

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``chital.client.Client`` (with the target)."""
        kwargs: dict[str, Any] = {"target": self.target, "token": self.token}
        if self.insecure:
            kwargs["insecure"] = True
        else:
            kwargs["tls"] = self.tls
        return kwargs

    def client(self, **kw: Any) -> Client:
        """A ``chital.client.Client`` for the controller; ``kw`` adds or replaces arguments
        (``timeout=``, ``retries=``, ``token=`` of another principal...)."""
        from chital.client import Client  # noqa: PLC0415 - optional at import time

        return Client(**{**self.client_kwargs(), **kw})

    def env(self) -> dict[str, str]:
        """The ``CHITAL_*`` variables that point the CLI at the controller."""
        env = {"CHITAL_CONTROLLER": self.target, "CHITAL_TOKEN": self.token}
        if self.insecure:
            env["CHITAL_INSECURE"] = "1"
        elif self.tls is not None:
            env["CHITAL_CACERT"] = str(self.tls.ca)
        return env

    def write(self, path: Path, *, context: str = "dev") -> Path:
        """Write a ``chital`` config file (mode 0600: it holds the token) whose current context is
        ``context``; returns ``path``. ``CHITAL_CONFIG=<path>`` points the CLI and SDK at it."""
        from chital.client.config import Config, Context  # noqa: PLC0415 - optional at import time

        config = Config(path=path)
        config.set_context(
            context,
            Context(
                controllers=(self.target,),
                ca=None if self.tls is None else str(self.tls.ca),
                token=self.token,
                insecure=self.insecure,
            ),
        )
        config.use_context(context)
        config.save()
        return path


class FleetPKI:
    """A dev fleet's PKI in ``directory`` (created on first use, reused afterwards)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.pki = PKI(directory) if (directory / "ca" / "ca.key").exists() else PKI.init(directory)

    @property
    def ca(self) -> Path:
        """The fleet CA's certificate (what clients verify the controller with)."""
        return self.directory / "ca" / "ca.crt"

    def controller(self, sans: Sequence[str] = ("127.0.0.1", "localhost")) -> Path:
        """The controller's bundle (``--tls-dir``), valid for ``sans``."""
        return self.pki.issue_controller(sans=sans)

    def agent(self, name: str, address_host: str = "127.0.0.1") -> Path:
        """An agent's bundle, named ``name``, valid for ``address_host``: the host part of the
        address the controller dials (several agents may share one, like hollow agents on
        127.0.0.1, and each keeps its own key)."""
        return self.pki.issue_agent(name, sans=(address_host,))

    def user(self, name: str, role: str) -> Path:
        """A client certificate bundle for ``name`` with ``role`` (admin, operator, viewer)."""
        return self.pki.issue_user(name, role)


def create_token(
    *,
    name: str,
    role: str = "admin",
    state_dir: Path | None = None,
    database_url: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> str:
    """``chital-controller token create``: a token written straight into the controller's
    database (the bootstrap path, before any client can authenticate). Returns the token."""
    argv = [str(BIN / "chital-controller"), "token", "create", "--role", role, "--name", name]
    if database_url:
        argv += ["--database-url", database_url]
    if state_dir is not None:
        argv += ["--state-dir", str(state_dir)]
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "GRPC_VERBOSITY": "ERROR", **(env or {})},
        check=False,
    )
    found = _TOKEN.search(proc.stdout)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(
            f"chital-controller token create failed (exit {proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
        )
    return found.group(0)
