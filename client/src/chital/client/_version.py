"""This distribution's version: written by `make version` from VERSION; do not edit."""

__version__ = "0.1.0"
