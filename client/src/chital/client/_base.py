"""What the synchronous and the asyncio client share: checking the arguments, finding the controller
when none is named, the channel's options and the token's metadata."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from chital.security.tls import TLSFiles, channel_credentials, is_loopback

from . import _retry
from . import config as _config
from ._auth import AUTHORIZATION, check_token
from ._types import RetryPolicy
from ._version import __version__

USER_AGENT = f"chital-python/{__version__}"

DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Settings:
    """A client's checked settings: where, how, and with which token."""

    target: str
    credentials: grpc.ChannelCredentials | None
    insecure: bool
    timeout: float
    retries: RetryPolicy
    metadata: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @property
    def options(self) -> list[tuple[str, Any]]:
        """The channel options: the service config with the retry policy, the user agent."""
        return _retry.channel_options(self.retries, USER_AGENT)


def _context_target(env: Mapping[str, str]) -> str | None:
    """The controller of the selected context (``$CHITAL_CONTEXT``, else the file's current one)."""
    config = _config.Config.load(env=env)
    name = env.get(_config.ENV_CONTEXT) or config.current_context
    if not name:
        return None
    return config.context(name).target


def settings(
    target: str | None,
    *,
    tls: TLSFiles | None,
    token: str | None,
    insecure: bool,
    timeout: float,
    retries: RetryPolicy,
    credentials: grpc.ChannelCredentials | None,
) -> Settings:
    """Check a client's arguments and fill in what the environment and the config file say.

    Without ``target``, ``tls``, ``credentials`` and ``insecure``, everything comes from
    :func:`chital.client.config.resolve` (``CHITAL_*`` variables, then the current context), the
    token too unless one is given. Without ``target`` only, it is ``$CHITAL_CONTROLLER``, else the
    current context's controller, else ``127.0.0.1:7443``.
    """
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    if tls is not None and credentials is not None:
        raise ValueError("pass tls or credentials, not both")
    if target is None and tls is None and credentials is None and not insecure:
        env = os.environ
        connection = _config.resolve(_config.Overrides(token=token), env=env)
        target, tls, insecure = connection.target, connection.tls, connection.insecure
        token = connection.token
    elif target is None:
        target = os.environ.get(_config.ENV_CONTROLLER) or _context_target(os.environ)
        target = target or _config.DEFAULT_CONTROLLER
    secure = tls is not None or credentials is not None
    if insecure and secure:
        raise ValueError("insecure=True dials in plaintext: it takes no tls or credentials")
    if not insecure and not secure:
        raise ValueError(
            f"no TLS material for controller {target}: pass tls=TLSFiles(ca=...) (or credentials=), "
            "insecure=True for a plaintext controller on loopback, or use Client.from_config() to "
            "read CHITAL_* variables and the config file"
        )
    if insecure and not is_loopback(target):
        raise ValueError(
            f"insecure=True is only for a controller on loopback, not {target}: "
            "a token would cross the network in plaintext"
        )
    metadata: tuple[tuple[str, str], ...] = ()
    if token is not None:  # checked before any channel is made
        metadata = ((AUTHORIZATION, f"Bearer {check_token(token)}"),)
    if tls is not None:
        credentials = channel_credentials(tls)
    return Settings(target, credentials, insecure, timeout, retries, metadata)


def from_config_settings(
    *,
    context: str | None,
    target: str | None,
    token: str | None,
    token_file: str | None,
    tls_dir: str | None,
    ca: str | None,
    cert: str | None,
    key: str | None,
    insecure: bool | None,
    config_path: str | Path | None,
    env: Mapping[str, str] | None,
) -> _config.Connection:
    """The connection ``from_config`` resolves: arguments > environment > context > defaults."""
    environ = os.environ if env is None else env
    return _config.resolve(
        _config.Overrides(
            target=target,
            context=context,
            token=token,
            token_file=token_file,
            tls_dir=tls_dir,
            ca=ca,
            cert=cert,
            key=key,
            insecure=insecure,
        ),
        env=environ,
        config=_config.Config.load(config_path, env=environ),
    )


def deadline(settings: Settings, timeout: float | None, extra: float = 0.0) -> float:
    """A call's deadline in seconds: ``timeout`` when given, else the client's plus ``extra``."""
    if timeout is not None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        return timeout
    return settings.timeout + extra
