"""What the synchronous and the asyncio client share: checking the arguments, finding the controller
when none is named, the channel's options and the token's metadata."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Self

import grpc

from chital.security.tls import TLSFiles, channel_credentials, is_loopback

from . import _failover, _retry
from . import config as _config
from ._auth import AUTHORIZATION, check_token
from ._errors import error_from_rpc, is_tls_failure, status_code
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
    def targets(self) -> tuple[str, ...]:
        """The controllers' addresses (``target`` may list several, separated by commas)."""
        return _failover.split_targets(self.target)

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
    [`chital.client.config.resolve`][chital.client.config.resolve] (``CHITAL_*`` variables, then the
    current context), the token too unless one is given. Without ``target`` only, it is
    ``$CHITAL_CONTROLLER``, else the current context's controller, else ``127.0.0.1:7443``.
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
    targets = _failover.split_targets(target)
    target = ",".join(targets)
    remote = [t for t in targets if not is_loopback(t)]
    if insecure and remote:
        raise ValueError(
            f"insecure=True is only for a controller on loopback, not {remote[0]}: "
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


def raise_chital_error(exc: grpc.RpcError) -> NoReturn:
    """The one place where a gRPC error becomes a chital exception."""
    raise error_from_rpc(exc) from exc


def resumable(exc: grpc.RpcError) -> bool:
    """Whether a broken watch may be opened again: the controller or the network went away."""
    return status_code(exc) is grpc.StatusCode.UNAVAILABLE and not is_tls_failure(exc)


_DEFAULT_RETRIES = RetryPolicy()


class ClientBase:
    """What [`Client`][chital.client.Client] and [`AsyncClient`][chital.client.aio.AsyncClient]
    share: how their settings are found, and [`from_config`][chital.client.Client.from_config]. Each
    opens its own kind of channel."""

    _settings: Settings

    def __init__(
        self,
        target: str | None = None,
        *,
        tls: TLSFiles | None = None,
        token: str | None = None,
        insecure: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        retries: RetryPolicy = _DEFAULT_RETRIES,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """Open a channel to ``target`` (``host:port``; several controllers of one cluster as
        ``host:port,host:port``: one channel each, and calls fail over between them, see
        `chital.client._failover` and docs/ha.md).

        The channel is TLS, verified with ``tls.ca`` (and presenting ``tls.cert``/``tls.key`` when
        given), or with ready-made ``credentials``. ``insecure=True`` dials in plaintext instead, to
        a loopback address only. ``token`` is sent as ``authorization: Bearer <token>`` with every
        call.

        With none of ``target``, ``tls``, ``credentials`` and ``insecure``, the client is set up as
        the ``chital`` command is: ``CHITAL_CONTROLLER``, ``CHITAL_CACERT``, ``CHITAL_TOKEN``...
        else the config file's current context (see [`chital.client.config`][chital.client.config]).
        With ``tls`` or ``insecure`` but no ``target``, the target is ``$CHITAL_CONTROLLER``, else
        the current context's controller, else ``127.0.0.1:7443``.
        [`from_config`][chital.client.Client.from_config] gives full control.

        The channel connects lazily: an unreachable controller surfaces as
        [`Unavailable`][chital.client.Unavailable] on the first call, after the retries; a failed
        TLS handshake too, with a message that says what failed. Raises ValueError
        ([`ConfigError`][chital.client.config.ConfigError] for the config file) when the settings
        cannot work.
        """
        self._settings = settings(
            target,
            tls=tls,
            token=token,
            insecure=insecure,
            timeout=timeout,
            retries=retries,
            credentials=credentials,
        )
        self._connect(self._settings)

    def _connect(self, s: Settings) -> None:
        raise NotImplementedError

    @property
    def target(self) -> str:
        """The controller's address (several: separated by commas)."""
        return self._settings.target

    @property
    def timeout(self) -> float:
        """The default deadline of a call, in seconds."""
        return self._settings.timeout

    @property
    def retries(self) -> RetryPolicy:
        """The retry policy the channel's service config was made from."""
        return self._settings.retries

    @property
    def insecure(self) -> bool:
        """Whether the channel is plaintext (loopback only)."""
        return self._settings.insecure

    @classmethod
    def from_config(
        cls,
        context: str | None = None,
        *,
        target: str | None = None,
        token: str | None = None,
        token_file: str | None = None,
        tls_dir: str | None = None,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        insecure: bool | None = None,
        config_path: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: RetryPolicy = _DEFAULT_RETRIES,
    ) -> Self:
        """A client set up like the ``chital`` command: each setting from the arguments given here,
        else the environment (``CHITAL_CONTROLLER``, ``CHITAL_TOKEN``, ``CHITAL_TLS_DIR``,
        ``CHITAL_CACERT``, ...), else the context (``context``, else ``$CHITAL_CONTEXT``, else the
        file's ``current_context``) of the config file (``config_path``, else ``$CHITAL_CONFIG``,
        else ``~/.config/chital/config.toml``), else the defaults.

        Raises [`chital.client.config.ConfigError`][chital.client.config.ConfigError] (a ValueError)
        naming the missing or broken setting and where it came from. ``env`` replaces ``os.environ``
        (for tests).
        """
        connection = from_config_settings(
            context=context,
            target=target,
            token=token,
            token_file=token_file,
            tls_dir=tls_dir,
            ca=ca,
            cert=cert,
            key=key,
            insecure=insecure,
            config_path=config_path,
            env=env,
        )
        return cls(
            connection.target,
            tls=connection.tls,
            token=connection.token,
            insecure=connection.insecure,
            timeout=timeout,
            retries=retries,
        )
