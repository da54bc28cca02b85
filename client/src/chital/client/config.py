"""The client's config file, its contexts, and where each connection setting comes from.

The file is ``$CHITAL_CONFIG``, else ``$XDG_CONFIG_HOME/chital/config.toml``, else
``~/.config/chital/config.toml``:

```toml
current_context = "dev"

[contexts.dev]
controllers = ["127.0.0.1:7443"]
tls_dir = "/etc/chital/users/alice"   # ca.crt, and tls.crt + tls.key when present
# or: ca = "...", cert = "...", key = "..."
token_file = "/home/alice/.chital-token"   # or: token = "chital_..."
insecure = false
```

Each setting is taken from the first of these that has it: command-line flags
([`Overrides`][chital.client.config.Overrides]), the environment (``CHITAL_CONTROLLER``,
``CHITAL_TOKEN``, ``CHITAL_TOKEN_FILE``, ``CHITAL_TLS_DIR``, ``CHITAL_CACERT``,
``CHITAL_CLIENT_CERT``, ``CHITAL_CLIENT_KEY``, ``CHITAL_INSECURE``), the context (``--context``,
else ``CHITAL_CONTEXT``, else ``current_context``), then the defaults. A ``tls_dir`` stands for its
``ca.crt``, ``tls.crt`` and ``tls.key`` at its own level, so ``--ca`` replaces only the CA of a
context's bundle. Relative paths in the file are relative to the file's directory.

[`resolve`][chital.client.config.resolve] applies these rules and returns a
[`Connection`][chital.client.config.Connection]; [`Config.save`][chital.client.config.Config.save]
writes the file atomically with mode 0600, since it may hold a token (comments are not kept).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chital.security.tls import TLSFiles

__all__ = [
    "DEFAULT_CONTROLLER",
    "ENV_CACERT",
    "ENV_CLIENT_CERT",
    "ENV_CLIENT_KEY",
    "ENV_CONFIG",
    "ENV_CONTEXT",
    "ENV_CONTROLLER",
    "ENV_INSECURE",
    "ENV_TLS_DIR",
    "ENV_TOKEN",
    "ENV_TOKEN_FILE",
    "Config",
    "ConfigError",
    "Connection",
    "Context",
    "Overrides",
    "default_config_path",
    "resolve",
]

DEFAULT_CONTROLLER = "127.0.0.1:7443"

ENV_CONFIG = "CHITAL_CONFIG"
ENV_CONTEXT = "CHITAL_CONTEXT"
ENV_CONTROLLER = "CHITAL_CONTROLLER"
ENV_TOKEN = "CHITAL_TOKEN"  # noqa: S105 - the name of a variable, not a secret
ENV_TOKEN_FILE = "CHITAL_TOKEN_FILE"  # noqa: S105
ENV_TLS_DIR = "CHITAL_TLS_DIR"
ENV_CACERT = "CHITAL_CACERT"
ENV_CLIENT_CERT = "CHITAL_CLIENT_CERT"
ENV_CLIENT_KEY = "CHITAL_CLIENT_KEY"
ENV_INSECURE = "CHITAL_INSECURE"

# The files of an identity bundle (chital.security.pki writes them).
BUNDLE_CA = "ca.crt"
BUNDLE_CERT = "tls.crt"
BUNDLE_KEY = "tls.key"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


class ConfigError(ValueError):
    """A config file, context or setting that cannot be used; the message says which, and where it
    came from."""


# -- the file ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """One named context: where the controllers are and how to authenticate to them.

    Paths are kept as written; [`resolve`][chital.client.config.resolve] reads relative ones from
    the config file's directory.
    """

    controllers: tuple[str, ...] = ()
    tls_dir: str | None = None
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    token: str | None = field(default=None, repr=False)
    token_file: str | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        if self.token is not None and self.token_file is not None:
            raise ConfigError("a context takes token or token_file, not both")
        if self.insecure and any((self.tls_dir, self.ca, self.cert, self.key)):
            raise ConfigError(
                "a context takes insecure = true or TLS files (tls_dir, ca, cert, key), not both"
            )

    @property
    def target(self) -> str | None:
        """The controllers this context dials, separated by commas: calls go to the first and fail
        over to the next when one is unavailable (docs/ha.md)."""
        return ",".join(self.controllers) if self.controllers else None


_STRING_KEYS = ("tls_dir", "ca", "cert", "key", "token", "token_file")
_CONTEXT_KEYS = ("controllers", *_STRING_KEYS, "insecure")
_TOP_KEYS = ("current_context", "contexts")


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    """``$CHITAL_CONFIG``, else ``$XDG_CONFIG_HOME/chital/config.toml``, else
    ``~/.config/chital/config.toml``."""
    env = os.environ if env is None else env
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path("~/.config").expanduser())
    return Path(base) / "chital" / "config.toml"


@dataclass
class Config:
    """The config file: its contexts and the current one. [`load`][chital.client.config.Config.load]
    it, change it, [`save`][chital.client.config.Config.save]."""

    path: Path
    current_context: str | None = None
    contexts: dict[str, Context] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None = None, *, env: Mapping[str, str] | None = None) -> Config:
        """Read the file at ``path`` (default:
        [`default_config_path`][chital.client.config.default_config_path]). A missing file is an
        empty config; a malformed one raises [`ConfigError`][chital.client.config.ConfigError]
        naming the file and the problem."""
        file = Path(path).expanduser() if path is not None else default_config_path(env)
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(path=file)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {file}: {exc}") from exc
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file} is not valid TOML: {exc}") from exc
        return cls._from_dict(file, data)

    @classmethod
    def _from_dict(cls, file: Path, data: dict[str, Any]) -> Config:
        unknown = sorted(set(data) - set(_TOP_KEYS))
        if unknown:
            known = ", ".join(_TOP_KEYS)
            raise ConfigError(f"config file {file}: unknown key {unknown[0]!r} (known: {known})")
        current = data.get("current_context")
        if current is not None and not isinstance(current, str):
            raise ConfigError(f"config file {file}: current_context must be a string")
        tables = data.get("contexts", {})
        if not isinstance(tables, dict):
            raise ConfigError(f"config file {file}: contexts must be a table ([contexts.NAME])")
        contexts = {}
        for name, table in tables.items():
            where = f"config file {file}, context {name!r}"
            if not isinstance(table, dict):
                raise ConfigError(f"{where}: must be a table ([contexts.{_toml_key(name)}])")
            contexts[name] = _context_from_dict(where, table)
        return cls(path=file, current_context=current or None, contexts=contexts)

    def context(self, name: str) -> Context:
        """The context called ``name``; [`ConfigError`][chital.client.config.ConfigError] when there
        is none."""
        try:
            return self.contexts[name]
        except KeyError:
            known = ", ".join(sorted(self.contexts)) or "none"
            raise ConfigError(f"no context {name!r} in {self.path} (contexts: {known})") from None

    def set_context(self, name: str, context: Context) -> None:
        """Add or replace the context ``name``."""
        _check_context_name(name)
        self.contexts[name] = context

    def remove_context(self, name: str) -> None:
        """Remove the context ``name`` (the current context is unset when it was that one)."""
        self.context(name)
        del self.contexts[name]
        if self.current_context == name:
            self.current_context = None

    def use_context(self, name: str) -> None:
        """Make ``name`` the current context."""
        self.context(name)
        self.current_context = name

    def dumps(self) -> str:
        """The file's text (TOML)."""
        lines = ["# chital client configuration: see `chital context --help`.", ""]
        if self.current_context:
            lines += [f"current_context = {_toml_string(self.current_context)}", ""]
        for name, context in self.contexts.items():
            lines.append(f"[contexts.{_toml_key(name)}]")
            if context.controllers:
                lines.append(f"controllers = [{', '.join(_toml_string(c) for c in context.controllers)}]")
            for key in _STRING_KEYS:
                value = getattr(context, key)
                if value is not None:
                    lines.append(f"{key} = {_toml_string(value)}")
            if context.insecure:
                lines.append("insecure = true")
            lines.append("")
        text = "\n".join(lines)
        # What is written must read back as the same config: a writer bug must not lose a context.
        again = Config._from_dict(self.path, tomllib.loads(text))
        if (again.current_context, again.contexts) != (self.current_context or None, self.contexts):
            raise AssertionError("config writer produced a file that does not read back")
        return text

    def save(self) -> None:
        """Write the file atomically (a new file renamed over the old one), mode 0600 in a 0700
        directory created when missing. A symbolic link is followed, not replaced."""
        text = self.dumps()
        target = Path(os.path.realpath(self.path))
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _context_from_dict(where: str, table: dict[str, Any]) -> Context:
    unknown = sorted(set(table) - set(_CONTEXT_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(_CONTEXT_KEYS)})")
    controllers = table.get("controllers", [])
    if not isinstance(controllers, list) or not all(isinstance(c, str) and c for c in controllers):
        raise ConfigError(f'{where}: controllers must be a list of "host:port" strings')
    values: dict[str, Any] = {"controllers": tuple(controllers)}
    for key in _STRING_KEYS:
        if key in table:
            if not isinstance(table[key], str) or not table[key]:
                raise ConfigError(f"{where}: {key} must be a non-empty string")
            values[key] = table[key]
    if "insecure" in table:
        if not isinstance(table["insecure"], bool):
            raise ConfigError(f"{where}: insecure must be true or false")
        values["insecure"] = table["insecure"]
    try:
        return Context(**values)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _check_context_name(name: str) -> None:
    if not name or not name.isprintable() or name != name.strip():
        raise ConfigError(f"invalid context name {name!r}: printable, without leading or trailing spaces")


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_string(value: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for char in value:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else _toml_string(name)


# -- resolution ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Overrides:
    """Settings given explicitly (the command-line flags); ``None`` is "not given", and an empty
    ``token`` is "no token" (the context's is not used)."""

    target: str | None = None
    context: str | None = None
    token: str | None = field(default=None, repr=False)
    token_file: str | None = None
    tls_dir: str | None = None
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    insecure: bool | None = None


@dataclass(frozen=True)
class Connection:
    """Where to connect and how, with where each setting came from.

    ``sources`` maps ``target``, ``ca``, ``cert``, ``key``, ``token`` and ``insecure`` to a phrase
    such as ``"flag --ca"``, ``"env CHITAL_TOKEN"``, ``"tls_dir in context 'dev' of <file>"`` or
    ``"default"`` (only the settings that are set appear), for messages.
    """

    target: str
    tls: TLSFiles | None = None
    token: str | None = field(default=None, repr=False)
    insecure: bool = False
    context: str | None = None
    config_path: Path | None = None
    sources: Mapping[str, str] = field(default_factory=dict)
    token_path: Path | None = None
    """The file the token was read from: a token file, or the config file for a context's inline
    token (None for a token given by flag or environment)."""


@dataclass(frozen=True)
class _Layer:
    """One source of settings (paths already absolute) and how to name it in messages."""

    kind: str  # "flag", "env" or "context"
    values: Mapping[str, Any]
    context: str = ""
    path: Path | None = None

    def where(self, key: str) -> str:
        if self.kind == "flag":
            return "flag " + _FLAG_OF.get(key, "--" + key.replace("_", "-"))
        if self.kind == "env":
            return "env " + _ENV_OF[key]
        return f"{_CONTEXT_KEY_OF.get(key, key)} in context {self.context!r} of {self.path}"


_ENV_OF = {
    "target": ENV_CONTROLLER,
    "token": ENV_TOKEN,
    "token_file": ENV_TOKEN_FILE,
    "tls_dir": ENV_TLS_DIR,
    "ca": ENV_CACERT,
    "cert": ENV_CLIENT_CERT,
    "key": ENV_CLIENT_KEY,
    "insecure": ENV_INSECURE,
}
_FLAG_OF = {"target": "--controller"}
_CONTEXT_KEY_OF = {"target": "controllers"}
_PATH_KEYS = ("tls_dir", "ca", "cert", "key", "token_file")


def _absolute(value: str, base: Path | None) -> str:
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    return str(path.absolute())


def _flag_layer(overrides: Overrides) -> _Layer:
    # An empty value is "not given", except for the token, where it is "no token".
    values = {
        k: v
        for k, v in dataclasses.asdict(overrides).items()
        if k != "context" and v is not None and (v != "" or k == "token")
    }
    for key in _PATH_KEYS:
        if key in values:
            values[key] = _absolute(values[key], None)
    return _Layer("flag", values)


def _env_layer(env: Mapping[str, str]) -> _Layer:
    values: dict[str, Any] = {}
    for key, var in _ENV_OF.items():
        text = env.get(var)
        if not text:
            continue
        if key == "insecure":
            values[key] = _parse_bool(var, text)
        else:
            values[key] = _absolute(text, None) if key in _PATH_KEYS else text
    return _Layer("env", values)


def _parse_bool(var: str, text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ConfigError(f"{var}={text!r}: expected 1/true/yes/on or 0/false/no/off")


def _context_layer(name: str, context: Context, config_path: Path) -> _Layer:
    values: dict[str, Any] = {}
    if context.target:
        values["target"] = context.target
    for key in _STRING_KEYS:
        value = getattr(context, key)
        if value is not None:
            values[key] = _absolute(value, config_path.parent) if key in _PATH_KEYS else value
    if context.insecure:
        values["insecure"] = True
    return _Layer("context", values, context=name, path=config_path)


def _select_context(overrides: Overrides, env: Mapping[str, str], config: Config) -> tuple[str | None, str]:
    if overrides.context:
        return overrides.context, "flag --context"
    if env.get(ENV_CONTEXT):
        return env[ENV_CONTEXT], f"env {ENV_CONTEXT}"
    if config.current_context:
        return config.current_context, f"current_context in {config.path}"
    return None, ""


def _tls_values(layer: _Layer) -> dict[str, str]:
    """The CA, certificate and key a layer sets: its tls_dir's files, then its explicit ones."""
    values: dict[str, str] = {}
    directory = layer.values.get("tls_dir")
    if directory is not None:
        bundle = Path(directory)
        if not bundle.is_dir():
            raise ConfigError(f"TLS directory {bundle} (from {layer.where('tls_dir')}) does not exist")
        if (bundle / BUNDLE_CA).is_file():
            values["ca"] = str(bundle / BUNDLE_CA)
        elif "ca" not in layer.values:
            raise ConfigError(f"TLS directory {bundle} (from {layer.where('tls_dir')}) has no {BUNDLE_CA}")
        if (bundle / BUNDLE_CERT).is_file() and (bundle / BUNDLE_KEY).is_file():
            values["cert"] = str(bundle / BUNDLE_CERT)
            values["key"] = str(bundle / BUNDLE_KEY)
    for key in ("ca", "cert", "key"):
        if key in layer.values:
            values[key] = layer.values[key]
    return values


def _read_token_file(path: str, where: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read token file {path} (from {where}): {exc}") from exc
    token = text.strip()
    if not token:
        raise ConfigError(f"token file {path} (from {where}) is empty")
    return token


def _missing_ca_message(target: str, context: str | None) -> str:
    if context is not None:
        in_context = f"or set ca or tls_dir in context {context!r} (chital context set {context} --ca FILE)"
    else:
        in_context = "or add a context (chital context set NAME --controller HOST:PORT --ca FILE)"
    return (
        f"no CA certificate to verify controller {target}: pass --ca or --tls-dir, "
        f"set {ENV_CACERT} or {ENV_TLS_DIR}, {in_context}; "
        "--insecure only for a plaintext controller on loopback"
    )


def resolve(
    overrides: Overrides | None = None,
    *,
    env: Mapping[str, str] | None = None,
    config: Config | None = None,
) -> Connection:
    """Decide the controller address, TLS files, token and insecure mode: flags (``overrides``) >
    environment (``env``, default ``os.environ``) > context > defaults.

    ``config`` defaults to [`Config.load`][chital.client.config.Config.load] of the default path.
    Files named by any source must exist; a TLS directory must hold ``ca.crt``; a client certificate
    needs its key. Raises [`ConfigError`][chital.client.config.ConfigError] with a message naming
    the setting and where it came from.
    """
    overrides = overrides or Overrides()
    env = os.environ if env is None else env
    config = Config.load(env=env) if config is None else config
    context_name, chosen_by = _select_context(overrides, env, config)
    layers = [_flag_layer(overrides), _env_layer(env)]
    if context_name is not None:
        if context_name not in config.contexts:
            known = ", ".join(sorted(config.contexts)) or "none"
            raise ConfigError(
                f"context {context_name!r} (from {chosen_by}) is not in {config.path} (contexts: {known})"
            )
        layers.append(_context_layer(context_name, config.contexts[context_name], config.path))

    sources: dict[str, str] = {}
    target = next((layer.values["target"] for layer in layers if "target" in layer.values), None)
    if target is None:
        target, sources["target"] = DEFAULT_CONTROLLER, "default"
    else:
        sources["target"] = next(layer.where("target") for layer in layers if "target" in layer.values)

    # TLS files: each of ca, cert and key from the first layer that sets it (a tls_dir sets the
    # files of its bundle at its own level). Plaintext when insecure is set above them.
    tls, tls_rank = _tls_settings(layers, sources)
    insecure_rank = next((r for r, layer in enumerate(layers) if "insecure" in layer.values), len(layers))
    insecure = insecure_rank < len(layers) and bool(layers[insecure_rank].values["insecure"])
    if insecure:
        sources["insecure"] = layers[insecure_rank].where("insecure")
        if tls and insecure_rank == tls_rank:
            raise ConfigError(
                f"{sources['insecure']} asks for plaintext, and TLS files are set there too; choose one"
            )
        if tls and tls_rank < insecure_rank:  # TLS given more explicitly than insecure: TLS wins.
            insecure = False
            del sources["insecure"]
    files: TLSFiles | None = None
    if insecure:
        for key in ("ca", "cert", "key"):
            sources.pop(key, None)
    else:
        files = _tls_files(tls, sources, target, context_name)

    token, token_path = _token(layers, sources)
    return Connection(
        target=target,
        tls=files,
        token=token,
        token_path=token_path,
        insecure=insecure,
        context=context_name,
        config_path=config.path,
        sources=sources,
    )


def _tls_settings(layers: list[_Layer], sources: dict[str, str]) -> tuple[dict[str, str], int]:
    """The TLS files each from the first layer that sets it, and the rank of the first such layer."""
    tls: dict[str, str] = {}
    rank_of_first = len(layers)
    for rank, layer in enumerate(layers):
        for key, value in _tls_values(layer).items():
            if key not in tls:
                tls[key] = value
                sources[key] = layer.where(key if key in layer.values else "tls_dir")
                rank_of_first = min(rank_of_first, rank)
    return tls, rank_of_first


def _tls_files(tls: dict[str, str], sources: dict[str, str], target: str, context: str | None) -> TLSFiles:
    if "ca" not in tls:
        raise ConfigError(_missing_ca_message(target, context))
    labels = {"ca": "CA certificate", "cert": "client certificate", "key": "client key"}
    for key, label in labels.items():
        if key in tls and not Path(tls[key]).is_file():
            raise ConfigError(f"{label} {tls[key]} (from {sources[key]}) does not exist")
    if ("cert" in tls) != ("key" in tls):
        have, lacking = ("cert", "key") if "cert" in tls else ("key", "cert")
        raise ConfigError(
            f"{labels[have]} {tls[have]} (from {sources[have]}) needs a {labels[lacking]}: "
            f"pass --{lacking}, set {_ENV_OF[lacking]}, or set {lacking} in the context"
        )
    return TLSFiles(
        ca=Path(tls["ca"]),
        cert=Path(tls["cert"]) if "cert" in tls else None,
        key=Path(tls["key"]) if "key" in tls else None,
    )


def _token(layers: list[_Layer], sources: dict[str, str]) -> tuple[str | None, Path | None]:
    """The token of the first layer that sets token or token_file, and the file it was read from."""
    for layer in layers:
        has_token, has_file = "token" in layer.values, "token_file" in layer.values
        if has_token and has_file:
            raise ConfigError(f"{layer.where('token')} and {layer.where('token_file')}: choose one")
        if has_token:
            if not layer.values["token"]:  # `--token ""`: no token, whatever the context says
                return None, None
            sources["token"] = layer.where("token")
            return str(layer.values["token"]), layer.path
        if has_file:
            sources["token"] = layer.where("token_file")
            path = layer.values["token_file"]
            return _read_token_file(path, sources["token"]), Path(path)
    return None, None
