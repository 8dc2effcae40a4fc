"""liverec: command-line entry point and process wiring."""

from typing import Any


def __getattr__(name: str) -> Any:
    # ``__version__`` on demand: every ``liverec`` command imports this package, and
    # most never need the version (importlib.metadata costs them tens of ms).
    if name == "__version__":
        from stream.buildinfo import liverec_version

        return liverec_version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
