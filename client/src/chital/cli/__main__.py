"""Entry point of the ``chital`` console script and of ``python -m chital.cli``."""

import sys

from chital.cli import main as _main


def main() -> None:
    """Run the command line and exit with its status."""
    sys.exit(_main())


if __name__ == "__main__":
    main()
