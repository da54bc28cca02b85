"""chital.client.config: the file and its contexts, and where each setting comes from
(flags > environment > context > defaults)."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

import pytest

from chital.client.config import (
    DEFAULT_CONTROLLER,
    Config,
    ConfigError,
    Context,
    Overrides,
    default_config_path,
    resolve,
)
from chital.security.pki import PKI

# -- the file ------------------------------------------------------------------------------------


def test_default_path(tmp_path: Path) -> None:
    assert default_config_path({"CHITAL_CONFIG": str(tmp_path / "c.toml")}) == tmp_path / "c.toml"
    assert default_config_path({"XDG_CONFIG_HOME": "/xdg"}) == Path("/xdg/chital/config.toml")
    assert default_config_path({}) == Path("~/.config/chital/config.toml").expanduser()


def test_a_missing_file_is_an_empty_config(tmp_path: Path) -> None:
    config = Config.load(tmp_path / "none.toml")
    assert (config.current_context, config.contexts) == (None, {})


def test_the_spec_example_reads(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        """
        current_context = "dev"
        [contexts.dev]
        controllers = ["127.0.0.1:7443"]
        ca = "/path/ca.crt"
        cert = "c.crt"; key = "c.key"
        token = "chital_x"
        insecure = false
        [contexts."prod eu"]
        controllers = ["10.0.0.1:7443", "10.0.0.2:7443"]
        tls_dir = "/etc/chital/users/alice"
        token_file = "~/.chital-token"
        """.replace("; ", "\n")
    )
    config = Config.load(path)
    assert config.current_context == "dev"
    dev = config.context("dev")
    assert dev == Context(
        controllers=("127.0.0.1:7443",), ca="/path/ca.crt", cert="c.crt", key="c.key", token="chital_x"
    )
    assert "chital_x" not in repr(dev)
    prod = config.context("prod eu")
    assert prod.target == "10.0.0.1:7443,10.0.0.2:7443" and prod.token_file == "~/.chital-token"


def test_save_round_trips_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "config.toml"
    config = Config(path=path)
    tricky = 'a "quoted" \\ back\tslash\nnewline \x01 é'
    config.set_context("dev", Context(controllers=("127.0.0.1:7443",), ca=tricky, token="chital_t"))
    config.set_context("a.b [c]", Context(insecure=True))
    config.use_context("a.b [c]")
    config.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = Config.load(path)
    assert again.current_context == "a.b [c]"
    assert again.contexts == config.contexts
    assert tomllib.loads(path.read_text())["contexts"]["dev"]["ca"] == tricky
    assert [p.name for p in path.parent.iterdir()] == ["config.toml"]  # no temporary file left


def test_save_replaces_a_loose_file_with_a_private_one(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("")
    path.chmod(0o644)
    config = Config.load(path)
    config.set_context("dev", Context(token="chital_t"))
    config.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_save_follows_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "chital.toml"
    real.parent.mkdir()
    real.write_text("")
    link = tmp_path / "config.toml"
    link.symlink_to(real)
    config = Config.load(link)
    config.set_context("dev", Context(insecure=True))
    config.save()
    assert link.is_symlink()
    assert "[contexts.dev]" in real.read_text()


def test_remove_and_use(tmp_path: Path) -> None:
    config = Config(path=tmp_path / "c.toml")
    config.set_context("a", Context())
    config.set_context("b", Context())
    config.use_context("a")
    config.remove_context("a")
    assert config.current_context is None and list(config.contexts) == ["b"]
    with pytest.raises(ConfigError, match=r"no context 'a' in .*c.toml \(contexts: b\)"):
        config.use_context("a")
    with pytest.raises(ConfigError, match="invalid context name"):
        config.set_context(" x", Context())


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("current_context = [", "is not valid TOML"),
        ("current = 'x'", "unknown key 'current'"),
        ("current_context = 1", "current_context must be a string"),
        ("contexts = 1", "contexts must be a table"),
        ("[contexts.dev]\ntokne = 'x'", "context 'dev': unknown key 'tokne'"),
        ("[contexts.dev]\ncontrollers = '127.0.0.1:7443'", "controllers must be a list"),
        ("[contexts.dev]\nca = 1", "ca must be a non-empty string"),
        ("[contexts.dev]\ninsecure = 'yes'", "insecure must be true or false"),
        ("[contexts.dev]\ntoken = 'a'\ntoken_file = 'b'", "token or token_file, not both"),
        ("[contexts.dev]\ninsecure = true\nca = 'x'", "insecure = true or TLS files"),
    ],
)
def test_malformed_files_are_named_and_explained(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=error) as info:
        Config.load(path)
    assert str(path) in str(info.value)


# -- resolution ----------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """Empty files standing for CAs, certificates and keys (resolution only checks they exist)."""
    names = ("flag-ca", "env-ca", "ctx-ca", "cert", "key", "env-cert", "env-key")
    out = {}
    for name in names:
        path = tmp_path / name
        path.write_text("x")
        out[name] = str(path)
    token = tmp_path / "token"
    token.write_text("  chital_from_file\n")
    out["token"] = str(token)
    return out


def config_with(tmp_path: Path, current: str | None = "dev", **contexts: Context) -> Config:
    return Config(path=tmp_path / "config.toml", current_context=current, contexts=dict(contexts))


def test_defaults_need_a_ca_and_say_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(env={}, config=config_with(tmp_path, None))
    message = str(info.value)
    assert message.startswith(f"no CA certificate to verify controller {DEFAULT_CONTROLLER}:")
    for hint in ("--ca", "--tls-dir", "CHITAL_CACERT", "CHITAL_TLS_DIR", "chital context set", "--insecure"):
        assert hint in message


def test_missing_ca_names_the_context(tmp_path: Path) -> None:
    config = config_with(tmp_path, dev=Context(controllers=("10.0.0.1:7443",)))
    with pytest.raises(ConfigError, match="or set ca or tls_dir in context 'dev'"):
        resolve(env={}, config=config)


def test_insecure_defaults(tmp_path: Path) -> None:
    connection = resolve(Overrides(insecure=True), env={}, config=config_with(tmp_path, None))
    assert (connection.target, connection.tls, connection.token) == (DEFAULT_CONTROLLER, None, None)
    assert connection.insecure and connection.context is None
    assert connection.sources == {"target": "default", "insecure": "flag --insecure"}


def test_flags_beat_env_beat_context(tmp_path: Path, files: dict[str, str]) -> None:
    config = config_with(
        tmp_path,
        dev=Context(controllers=("ctx:1", "ctx:2"), ca=files["ctx-ca"], token="chital_ctx"),
    )
    env = {"CHITAL_CONTROLLER": "env:1", "CHITAL_CACERT": files["env-ca"], "CHITAL_TOKEN": "chital_env"}
    flags = Overrides(target="flag:1", ca=files["flag-ca"], token="chital_flag")

    c = resolve(flags, env=env, config=config)
    assert (c.target, str(c.tls.ca), c.token) == ("flag:1", files["flag-ca"], "chital_flag")  # type: ignore[union-attr]
    assert c.sources == {"target": "flag --controller", "ca": "flag --ca", "token": "flag --token"}

    c = resolve(Overrides(), env=env, config=config)
    assert (c.target, str(c.tls.ca), c.token) == ("env:1", files["env-ca"], "chital_env")  # type: ignore[union-attr]
    assert c.sources["token"] == "env CHITAL_TOKEN" and c.sources["target"] == "env CHITAL_CONTROLLER"

    c = resolve(Overrides(), env={}, config=config)
    assert (c.target, str(c.tls.ca), c.token) == ("ctx:1,ctx:2", files["ctx-ca"], "chital_ctx")  # type: ignore[union-attr]
    assert c.context == "dev"
    assert c.sources["target"] == f"controllers in context 'dev' of {config.path}"

    # Each setting on its own: the flag's address, the environment's token, the context's CA.
    c = resolve(Overrides(target="flag:1"), env={"CHITAL_TOKEN": "chital_env"}, config=config)
    assert (c.target, str(c.tls.ca), c.token) == ("flag:1", files["ctx-ca"], "chital_env")  # type: ignore[union-attr]


def test_context_selection(tmp_path: Path, files: dict[str, str]) -> None:
    config = config_with(
        tmp_path,
        dev=Context(controllers=("dev:1",), insecure=True),
        prod=Context(controllers=("prod:1",), ca=files["ctx-ca"]),
        stage=Context(controllers=("stage:1",), insecure=True),
    )
    assert resolve(env={}, config=config).target == "dev:1"
    assert resolve(env={"CHITAL_CONTEXT": "prod"}, config=config).target == "prod:1"
    c = resolve(Overrides(context="stage"), env={"CHITAL_CONTEXT": "prod"}, config=config)
    assert (c.target, c.context) == ("stage:1", "stage")
    with pytest.raises(
        ConfigError, match=r"context 'nope' \(from env CHITAL_CONTEXT\) is not in .* dev, prod"
    ):
        resolve(env={"CHITAL_CONTEXT": "nope"}, config=config)
    with pytest.raises(ConfigError, match=r"from flag --context"):
        resolve(Overrides(context="nope"), env={}, config=config)
    broken = config_with(tmp_path, "gone", dev=Context())
    with pytest.raises(ConfigError, match=r"context 'gone' \(from current_context in .*config.toml\)"):
        resolve(env={}, config=broken)


def test_tls_dir_is_its_bundle_at_its_own_level(tmp_path: Path, files: dict[str, str]) -> None:
    pki = PKI.init(tmp_path / "pki")
    alice = pki.issue_user("alice", "admin")
    config = config_with(tmp_path, dev=Context(tls_dir=str(alice)))
    c = resolve(env={}, config=config)
    assert c.tls is not None
    assert (c.tls.ca, c.tls.cert, c.tls.key) == (alice / "ca.crt", alice / "tls.crt", alice / "tls.key")
    assert c.sources["cert"] == f"tls_dir in context 'dev' of {config.path}"
    # A flag replaces one file of the context's bundle, not the whole bundle.
    c = resolve(Overrides(ca=files["flag-ca"]), env={}, config=config)
    assert c.tls is not None and (str(c.tls.ca), c.tls.cert) == (files["flag-ca"], alice / "tls.crt")
    # A bundle given by env replaces the context's files, each of them.
    env = {"CHITAL_TLS_DIR": str(alice), "CHITAL_CLIENT_CERT": files["env-cert"]}
    c = resolve(env=env, config=config_with(tmp_path, dev=Context(ca=files["ctx-ca"], key=files["key"])))
    assert c.tls is not None
    assert (c.tls.ca, str(c.tls.cert), c.tls.key) == (alice / "ca.crt", files["env-cert"], alice / "tls.key")
    assert c.sources == {
        "target": "default",
        "ca": "env CHITAL_TLS_DIR",
        "cert": "env CHITAL_CLIENT_CERT",
        "key": "env CHITAL_TLS_DIR",
    }


def test_a_ca_only_bundle_has_no_client_certificate(tmp_path: Path) -> None:
    bundle = tmp_path / "trust"
    bundle.mkdir()
    (bundle / "ca.crt").write_text("x")
    c = resolve(Overrides(tls_dir=str(bundle)), env={}, config=config_with(tmp_path, None))
    assert c.tls is not None and (c.tls.cert, c.tls.key) == (None, None)


@pytest.mark.parametrize(
    ("overrides", "env", "error"),
    [
        (
            Overrides(tls_dir="/nonexistent"),
            {},
            r"TLS directory /nonexistent \(from flag --tls-dir\) does not",
        ),
        (
            Overrides(),
            {"CHITAL_CACERT": "/no/ca.crt"},
            r"CA certificate /no/ca.crt \(from env CHITAL_CACERT\)",
        ),
        (
            Overrides(insecure=True, token_file="/no/token"),
            {},
            r"cannot read token file /no/token \(from flag",
        ),
        (Overrides(insecure=True), {"CHITAL_INSECURE": "maybe"}, r"CHITAL_INSECURE='maybe': expected 1/true"),
        (
            Overrides(insecure=True),
            {"CHITAL_TOKEN": "t", "CHITAL_TOKEN_FILE": "/f"},
            "env CHITAL_TOKEN and env CHITAL_TOKEN_FILE: choose one",
        ),
    ],
)
def test_bad_settings_say_what_and_where(
    tmp_path: Path, overrides: Overrides, env: dict[str, str], error: str
) -> None:
    with pytest.raises(ConfigError, match=error):
        resolve(overrides, env=env, config=config_with(tmp_path, None))


def test_a_certificate_needs_its_key(tmp_path: Path, files: dict[str, str]) -> None:
    with pytest.raises(
        ConfigError, match=r"client certificate .*cert \(from flag --cert\) needs a client key"
    ):
        resolve(
            Overrides(ca=files["flag-ca"], cert=files["cert"]), env={}, config=config_with(tmp_path, None)
        )
    flags = Overrides(ca=files["flag-ca"], key=files["key"])
    with pytest.raises(ConfigError, match=r"needs a client certificate: pass --cert, set CHITAL_CLIENT_CERT"):
        resolve(flags, env={}, config=config_with(tmp_path, None))


def test_an_empty_tls_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"empty \(from env CHITAL_TLS_DIR\) has no ca.crt"):
        resolve(env={"CHITAL_TLS_DIR": str(tmp_path / "empty")}, config=config_with(tmp_path, None))


def test_insecure_against_tls_the_more_explicit_wins(tmp_path: Path, files: dict[str, str]) -> None:
    tls_context = config_with(tmp_path, dev=Context(ca=files["ctx-ca"]))
    c = resolve(Overrides(insecure=True), env={}, config=tls_context)
    assert c.insecure and c.tls is None and "ca" not in c.sources
    c = resolve(env={"CHITAL_INSECURE": "true"}, config=tls_context)
    assert c.insecure and c.sources["insecure"] == "env CHITAL_INSECURE"
    insecure_context = config_with(tmp_path, dev=Context(insecure=True))
    c = resolve(Overrides(ca=files["flag-ca"]), env={}, config=insecure_context)
    assert not c.insecure and c.tls is not None and "insecure" not in c.sources
    # CHITAL_INSECURE=0 turns a context's insecure off (and then the CA is missing).
    with pytest.raises(ConfigError, match="no CA certificate"):
        resolve(env={"CHITAL_INSECURE": "0"}, config=insecure_context)
    with pytest.raises(ConfigError, match="flag --insecure asks for plaintext, and TLS files are set there"):
        resolve(Overrides(insecure=True, ca=files["flag-ca"]), env={}, config=config_with(tmp_path, None))


def test_token_file_and_relative_paths(tmp_path: Path, files: dict[str, str]) -> None:
    home = tmp_path / "home"
    (home / "certs").mkdir(parents=True)
    (home / "certs" / "ca.crt").write_text("x")
    (home / "token").write_text("chital_relative\n")
    config = Config(
        path=home / "config.toml",
        current_context="dev",
        contexts={"dev": Context(ca="certs/ca.crt", token_file="token")},
    )
    c = resolve(env={}, config=config)
    assert c.tls is not None and c.tls.ca == home / "certs" / "ca.crt"
    assert c.token == "chital_relative"
    assert c.sources["token"] == f"token_file in context 'dev' of {config.path}"
    # A token file from a higher level beats the context's inline token.
    config.contexts["dev"] = Context(ca="certs/ca.crt", token="chital_inline")
    assert resolve(env={}, config=config).token_path == config.path
    c = resolve(env={"CHITAL_TOKEN_FILE": files["token"]}, config=config)
    assert c.token == "chital_from_file" and c.token_path == Path(files["token"])
    assert resolve(env={"CHITAL_TOKEN": "chital_env"}, config=config).token_path is None
    assert resolve(Overrides(token=""), env={}, config=config).token is None  # `--token ""`: none
    (home / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        resolve(Overrides(token_file=str(home / "empty")), env={}, config=config)


def test_empty_flags_are_not_given(tmp_path: Path, files: dict[str, str]) -> None:
    config = config_with(tmp_path, dev=Context(controllers=("ctx:1",), ca=files["ctx-ca"]))
    c = resolve(Overrides(target="", ca="", tls_dir=""), env={}, config=config)
    assert c.target == "ctx:1" and c.tls is not None and str(c.tls.ca) == files["ctx-ca"]


def test_relative_flag_paths_are_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ca.crt").write_text("x")
    monkeypatch.chdir(tmp_path)
    c = resolve(Overrides(ca="ca.crt"), env={}, config=config_with(tmp_path, None))
    assert c.tls is not None and c.tls.ca == tmp_path / "ca.crt" and c.tls.ca.is_absolute()


def test_resolve_reads_the_default_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "from-env.toml"
    Config(
        path=path, current_context="x", contexts={"x": Context(controllers=("h:1",), insecure=True)}
    ).save()
    c = resolve(env={"CHITAL_CONFIG": str(path)})
    assert (c.target, c.config_path) == ("h:1", path)
    monkeypatch.setenv("CHITAL_CONFIG", str(path))
    assert resolve().target == "h:1"
    assert os.environ["CHITAL_CONFIG"] == str(path)
