"""An unprivileged user on the agent's host cannot drive the agent (issue: as ``nobody``, a direct
CreateContainer(root="/") + StartProcess ``id`` used to print ``uid=0(root)``).

The agent of this package serves mutual TLS with its bundle (see guest_agent.py). As uid 65534 in the
guest:
- the private keys (the agent's, the controller's, the CA's) cannot be read, and their modes say so;
- a gRPC client gets nothing: plaintext, TLS without a client certificate, and a self-made
  certificate claiming the controller role all fail the handshake (UNAVAILABLE);
- ``openssl s_client`` shows why: the agent demands a client certificate and drops the session;
- nothing was created on the agent by any of these attempts.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from chital.api.agent.v1 import agent_pb2 as pb

from .guest_agent import AgentProcess

NOBODY = 65534
SETPRIV = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]


def as_nobody(argv: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SETPRIV, *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), "GRPC_VERBOSITY": "NONE", "LANG": "C.UTF-8"},
        check=False,
    )


@pytest.fixture(scope="module")
def nobody_dir(agent: AgentProcess) -> Iterator[Path]:
    """A directory uid 65534 owns, with a copy of the fleet CA certificate (public: anyone may
    verify the agent; the bundles themselves sit in 0700 directories)."""
    d = Path(tempfile.mkdtemp(prefix="chital-nobody-", dir="/tmp"))
    shutil.copy(agent.pki.directory / "ca" / "ca.crt", d / "ca.crt")
    for path in (d, d / "ca.crt"):
        os.chown(path, NOBODY, NOBODY)
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_private_keys_are_root_only(agent: AgentProcess, nobody_dir: Path) -> None:
    keys = [
        agent.tls_dir / "tls.key",
        agent.controller_tls / "tls.key",
        agent.pki.directory / "ca" / "ca.key",
    ]
    for key in keys:
        st = key.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600), key
        assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700, key.parent
    result = as_nobody(["cat", *map(str, keys)], nobody_dir)
    assert result.returncode != 0
    assert result.stderr.count("Permission denied") == len(keys), result.stderr
    assert "PRIVATE KEY" not in result.stdout


def _nobody_python() -> str | None:
    """An interpreter uid 65534 may run, of this Python version (the venv's may live under /root)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, getattr(sys, "_base_executable", ""), f"/usr/bin/{version}"):
        if candidate and as_nobody([candidate, "-c", "pass"], Path("/")).returncode == 0:
            return candidate
    return None


GRPC_AS_NOBODY = textwrap.dedent(
    """
    import json, site, subprocess, sys
    site.addsitedir(sys.argv[1])
    import grpc
    from chital.api.agent.v1 import agent_pb2 as pb, agent_pb2_grpc as pb_grpc

    target, ca = sys.argv[2], open("ca.crt", "rb").read()
    # A self-made CA and a certificate that claims to be the controller.
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", "fake.key", "-out", "fake.crt", "-days", "1",
                    "-subj", "/O=chital/OU=controller/CN=controller"], check=True, capture_output=True)
    fake = grpc.ssl_channel_credentials(ca, open("fake.key", "rb").read(), open("fake.crt", "rb").read())
    channels = {
        "plaintext": grpc.insecure_channel(target),
        "no client certificate": grpc.secure_channel(target, grpc.ssl_channel_credentials(ca)),
        "self-made controller certificate": grpc.secure_channel(target, fake),
    }
    out = {}
    for what, channel in channels.items():
        stub = pb_grpc.AgentServiceStub(channel)
        try:
            stub.CreateContainer(pb.CreateContainerRequest(uid="intruder", root="/"), timeout=20)
            out[what] = "OK"
        except grpc.RpcError as exc:
            out[what] = exc.code().name
    print(json.dumps(out))
    """
)


def test_nobody_cannot_call_the_agent(agent: AgentProcess, nobody_dir: Path) -> None:
    python = _nobody_python()
    if python is None:
        pytest.fail("no Python interpreter that uid 65534 may run (the venv's lives in a private dir)")
    site_packages = sysconfig.get_paths()["purelib"]
    script = nobody_dir / "client.py"
    script.write_text(GRPC_AS_NOBODY)
    result = as_nobody([python, str(script), site_packages, f"127.0.0.1:{agent.port}"], nobody_dir)
    assert result.returncode == 0, result.stderr
    outcomes = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcomes == {
        "plaintext": "UNAVAILABLE",
        "no client certificate": "UNAVAILABLE",
        "self-made controller certificate": "UNAVAILABLE",
    }
    assert "intruder" not in {c.uid for c in agent.stub.Sync(pb.SyncRequest(), timeout=60).containers}


def test_openssl_shows_the_agent_demands_a_client_certificate(agent: AgentProcess, nobody_dir: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    command = f"sleep 2 | openssl s_client -connect 127.0.0.1:{agent.port} -CAfile ca.crt 2>&1"
    result = as_nobody(["sh", "-c", command], nobody_dir)
    # The agent's certificate verifies against the fleet CA; it sends a CertificateRequest (openssl
    # prints the signature algorithms it requests) and drops the session when no certificate comes.
    assert "Verify return code: 0 (ok)" in result.stdout, result.stdout
    assert "Requested Signature Algorithms" in result.stdout, result.stdout
    assert "unexpected eof" in result.stdout, result.stdout
