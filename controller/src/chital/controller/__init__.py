"""chital's controller: places containers on hosts, tracks them, serves the public API.

Layers: ``service`` (gRPC adapters) -> ``containers``/``hosts`` (use cases) -> ``store`` (SQL) and
``agents`` (calls to agents); ``health`` and ``events`` run in background threads.
"""

from ._version import __version__

__all__ = ["__version__"]
