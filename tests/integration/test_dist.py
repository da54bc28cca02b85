"""The released artefacts: ``scripts/dist.py`` (``make dist``) builds a wheel and an sdist of each
distribution, and the wheels installed into a fresh venv, away from the source tree, work.

The venv gets its packages only from a wheelhouse (``pip install --no-index``, no pip config): the
chital wheels plus their dependencies fetched by ``pip download`` from the index pip is configured
with, the one bootstrap installs from. The installed commands then run from a directory outside
the checkout: ``chital --version``, ``chital-controller db upgrade`` on SQLite, and a hollow fleet
whose controller and agents are the installed ``chital-controller`` and ``chital-agent``. Only the
agents' process launcher comes from the checkout (``CHITAL_LAUNCHER``): it is a C program that no
wheel carries (``make test`` builds it).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VERSION = (ROOT / "VERSION").read_text().strip()
DISTS = ("chital_api", "chital_agent", "chital_controller", "chital", "chital_devcluster")
PROJECTS = ("chital-api", "chital-agent", "chital-controller", "chital", "chital-devcluster")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without the checkout: no PYTHONPATH, no pip configuration, no venv."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV", "CHITAL_"))
    }
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.update(extra)
    return env


def _run(argv: list[str | Path], cwd: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, check=False, **kw
    )  # type: ignore[call-overload]
    assert result.returncode == 0, f"{argv}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(dist dir, wheelhouse) from scripts/dist.py."""
    base = tmp_path_factory.mktemp("dist")
    out, wheelhouse = base / "dist", base / "wheelhouse"
    _run([sys.executable, ROOT / "scripts" / "dist.py", "--out", out, "--wheelhouse", wheelhouse], cwd=ROOT)
    return out, wheelhouse


@pytest.fixture(scope="module")
def venv(built: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with every chital distribution installed from the wheelhouse; its bin/."""
    _, wheelhouse = built
    base = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", base / "venv"], cwd=base, env=_clean_env())
    bin_dir = base / "venv" / "bin"
    _run(
        [bin_dir / "python", "-m", "pip", "install", "--quiet", "--no-index", "--find-links", wheelhouse]
        + [f"{p}=={VERSION}" for p in PROJECTS],
        cwd=base,
        env=_clean_env(),
    )
    return bin_dir


def test_a_wheel_and_an_sdist_of_each_distribution(built: tuple[Path, Path]) -> None:
    out, _ = built
    names = sorted(p.name for p in out.iterdir())
    for dist in DISTS:
        assert f"{dist}-{VERSION}-py3-none-any.whl" in names
        assert f"{dist}-{VERSION}.tar.gz" in names
    assert len(names) == 2 * len(DISTS), names


def test_the_controller_ships_its_migrations(built: tuple[Path, Path]) -> None:
    out, _ = built
    revisions = sorted(
        p.name for p in (ROOT / "controller/src/chital/controller/migrations/versions").glob("*.py")
    )
    wheel = zipfile.ZipFile(out / f"chital_controller-{VERSION}-py3-none-any.whl").namelist()
    with tarfile.open(out / f"chital_controller-{VERSION}.tar.gz") as tar:
        sdist = tar.getnames()
    for names in (wheel, sdist):
        shipped = sorted(Path(n).name for n in names if "/migrations/versions/" in n and n.endswith(".py"))
        assert shipped == revisions
        assert any(n.endswith("chital/controller/migrations/env.py") for n in names)
        assert any(n.endswith("chital/controller/migrations/script.py.mako") for n in names)


def test_the_wheels_are_typed(built: tuple[Path, Path]) -> None:
    """PEP 561: each wheel's packages carry py.typed, so type checkers read their annotations (and
    the generated API's .pyi stubs) from an installed distribution."""
    out, _ = built
    typed = {
        "chital_api": ("api", "daemon", "errdefs", "security"),
        "chital": ("client", "cli"),
        "chital_agent": ("agent",),
        "chital_controller": ("controller",),
        "chital_devcluster": ("devcluster",),
    }
    for dist, packages in typed.items():
        names = zipfile.ZipFile(out / f"{dist}-{VERSION}-py3-none-any.whl").namelist()
        assert sorted(n for n in names if n.endswith("/py.typed")) == sorted(
            f"chital/{p}/py.typed" for p in packages
        ), dist
    api = zipfile.ZipFile(out / f"chital_api-{VERSION}-py3-none-any.whl").namelist()
    assert "chital/api/container/v1/container_pb2.pyi" in api


def test_every_distribution_reports_the_one_version(venv: Path, tmp_path: Path) -> None:
    code = (
        "import importlib.metadata as md, json, chital.version, chital.agent, chital.controller, "
        "chital.client, chital.devcluster;"
        "print(json.dumps({'modules': [m.__version__ for m in (chital.version, chital.agent, "
        "chital.controller, chital.client, chital.devcluster)], 'dists': [md.version(d) for d in "
        f"{PROJECTS!r}], 'file': chital.controller.__file__}}))"
    )
    report = json.loads(_run([venv / "python", "-c", code], cwd=tmp_path, env=_clean_env()).stdout)
    assert report["modules"] == [VERSION] * 5
    assert report["dists"] == [VERSION] * 5
    # Imported from the venv, not from the checkout.
    assert Path(report["file"]).is_relative_to(venv.parent), report["file"]
    for daemon in ("chital-agent", "chital-controller"):
        out = _run([venv / daemon, "--version"], cwd=tmp_path, env=_clean_env()).stdout
        assert out.split() == [daemon, VERSION]


def test_chital_version(venv: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [venv / "chital", "--version"],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert VERSION in result.stdout


def test_controller_db_upgrade_from_the_installed_wheel(venv: Path, tmp_path: Path) -> None:
    database = tmp_path / "state" / "controller.db"
    out = _run(
        [venv / "chital-controller", "db", "upgrade", "--database-url", f"sqlite:///{database}"],
        cwd=tmp_path,
        env=_clean_env(),
    ).stdout
    assert "database at head" in out
    with sqlite3.connect(database) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        (revision,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert {"hosts", "containers", "alembic_version"} <= tables
    head = sorted((ROOT / "controller/src/chital/controller/migrations/versions").glob("0*.py"))[-1]
    assert revision in head.read_text()


_SDK_SCRIPT = """
import json
from chital.client import Client
with Client.from_config() as client:
    hosts = list(client.iter_hosts())
    c = client.create_container("dist-smoke")
    p = client.exec(c.uid, ["/bin/sh", "-c", "exit 7"])
    done = client.wait_process(p.uid, timeout=60)
    print(json.dumps({
        "hosts": sorted(h.id for h in hosts),
        "states": sorted(h.state.name for h in hosts),
        "agent_versions": sorted(h.agent.agent_version for h in hosts if h.agent),
        "exit_code": done.exit_code,
    }))
"""


def test_a_hollow_fleet_from_the_installed_wheels(venv: Path, tmp_path: Path) -> None:
    launcher = ROOT / "agent" / "launcher" / "chital-launch"
    if not launcher.is_file():
        pytest.fail("agent/launcher/chital-launch is not built: run 'make launcher' (make test does)")
    workdir, ready = tmp_path / "fleet", tmp_path / "ready"
    env = _clean_env(CHITAL_LAUNCHER=str(launcher))
    log = (tmp_path / "hollow.log").open("w")
    argv = [venv / "python", "-m", "chital.devcluster.hollow", "--agents", "2", "--workdir", workdir]
    proc = subprocess.Popen(
        [*argv, "--ready-file", ready],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, (tmp_path / "hollow.log").read_text()
            assert time.monotonic() < deadline, "the hollow fleet did not start in 120 s"
            time.sleep(0.2)
        env["CHITAL_CONFIG"] = str(workdir / "client" / "config.toml")
        report = json.loads(_run([venv / "python", "-c", _SDK_SCRIPT], cwd=tmp_path, env=env).stdout)
        assert len(report["hosts"]) == 2
        assert report["states"] == ["READY", "READY"], report
        assert report["agent_versions"] == [VERSION, VERSION]
        assert report["exit_code"] == 7
        listed = _run([venv / "chital", "hosts", "ls", "-o", "json"], cwd=tmp_path, env=env).stdout
        json.loads(listed)
        for host in report["hosts"]:
            assert host in listed
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == 0, (tmp_path / "hollow.log").read_text()
