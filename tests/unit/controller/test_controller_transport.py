"""ControllerConfig.check_security: nothing is served in plaintext beyond loopback."""

from __future__ import annotations

import pytest

from chital.controller.server import ControllerConfig
from chital.errdefs import FailedPrecondition
from chital.security.pki import PKI


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(PKI.init(tmp_path_factory.mktemp("pki") / "pki").issue_controller())


@pytest.mark.parametrize("listen", ["0.0.0.0:9100", ":9100", "192.0.2.1:9100"])
def test_plain_metrics_beyond_loopback_are_refused(bundle: str, listen: str) -> None:
    with pytest.raises(FailedPrecondition, match="--metrics-tls"):
        ControllerConfig(tls_dir=bundle, metrics_listen=listen).check_security()
    ControllerConfig(tls_dir=bundle, metrics_listen=listen, metrics_tls=True).check_security()


def test_plain_metrics_on_loopback_are_allowed(bundle: str) -> None:
    ControllerConfig(tls_dir=bundle, metrics_listen="127.0.0.1:0").check_security()
    ControllerConfig(insecure=True, metrics_listen="127.0.0.1:0").check_security()
