"""chital's per-host agent: the only user of ``/dev/chital`` on a host.

Layers (ports and adapters): :mod:`chital.agent.service` (gRPC adapter; protobuf stops there) ->
:mod:`chital.agent.runtime` (use cases on plain dataclasses) -> the :mod:`chital.agent.device` port
(``LinuxDevice`` / ``FakeDevice``) and :mod:`chital.agent.process` (the process runner).
"""

from ._version import __version__

__all__ = ["__version__"]
