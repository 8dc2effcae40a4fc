"""liverec: command-line entry point and process wiring."""

from stream.buildinfo import liverec_version

__version__ = liverec_version()
