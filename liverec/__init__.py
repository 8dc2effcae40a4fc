"""liverec: command-line entry point and process wiring."""

__version__ = "0.1.0"
