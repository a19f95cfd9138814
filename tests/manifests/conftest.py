"""Fixtures shared with the packaging tests: the real kubectl and helm binaries."""

from tests.packaging.conftest import binaries

__all__ = ["binaries"]
