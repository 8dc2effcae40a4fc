"""`liverec keys add|list|revoke`: API keys of the serving process (see :mod:`serving.auth`).

The key file holds one salted scrypt hash per key, never a key: ``add`` prints the
new key once, and a lost key is revoked and replaced, not recovered. A running
server re-reads the file within a second, so ``revoke`` needs no restart.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from serving.auth import KeyFile

keys_app = typer.Typer(
    rich_markup_mode=None,
    help="API keys for `liverec serve` (stored as salted hashes; shown once).",
    no_args_is_help=True,
)


def default_key_file() -> Path:
    """``$LIVEREC_API_KEYS_FILE``, else ``$XDG_CONFIG_HOME/liverec/api_keys``."""
    if env := os.environ.get("LIVEREC_API_KEYS_FILE"):
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "liverec" / "api_keys"


FileOpt = Annotated[
    Path | None,
    typer.Option("--file", help="Key file [LIVEREC_API_KEYS_FILE, else "
                 "~/.config/liverec/api_keys]."),
]
LimitOpt = Annotated[
    list[str] | None,
    typer.Option("--limit", metavar="SCOPE=RATE/BURST",
                 help="The key's own rate limit of a scope, in place of the server's "
                      "LIVEREC_RATE_*: RATE tokens per second (a write costs one per "
                      "event), BURST the most at once; RATE 0 lifts the limit for this "
                      "key. Repeat for several scopes, e.g. --limit write=50/200."),
]


def _limits(items: list[str] | None) -> tuple[tuple[str, float, float], ...]:
    from serving.auth import parse_limits

    try:
        return parse_limits(",".join(items or []))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--limit") from None


def _limits_text(limits: tuple[tuple[str, float, float], ...]) -> str:
    from serving.auth import format_limits

    return format_limits(limits) if limits else "server's"


@keys_app.command("add")
def keys_add(
    name: Annotated[str, typer.Argument(
        metavar="NAME", help="A name for the key (letters, digits, . _ -); it appears in logs "
                             "and event ids, the key never.")],
    scope: Annotated[list[str] | None, typer.Option(
        "--scope", help="read, write or ops; repeat for several (default: write).")] = None,
    limit: LimitOpt = None,
    file: FileOpt = None,
) -> None:
    """Create a key, store its hash, print the key once."""
    from serving.auth import SCOPES, AuthConfigError, KeyFile

    scopes = set(scope or ["write"])
    if not scopes <= set(SCOPES):
        raise typer.BadParameter(f"scopes must be among {', '.join(SCOPES)}", param_hint="--scope")
    limits = _limits(limit)
    path = file or default_key_file()
    try:
        key = KeyFile(path).add(name, scopes, limits)
    except (AuthConfigError, OSError) as exc:  # OSError: e.g. the path is a directory
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(key)
    typer.echo(
        f"key {name!r} ({', '.join(sorted(scopes))}; rate limits {_limits_text(limits)}) "
        f"stored as a hash in {path}; the key above "
        "is shown only now. Serve with LIVEREC_API_KEYS_FILE={path} and send it as "
        "'Authorization: Bearer <key>' or 'X-API-Key: <key>'.".replace("{path}", str(path)),
        err=True,
    )


@keys_app.command("list")
def keys_list(file: FileOpt = None) -> None:
    """List key names, ids and scopes (never the keys; they are not stored)."""
    from serving.auth import AuthConfigError, KeyFile

    path = file or default_key_file()
    try:
        keys = KeyFile(path).load()
    except (AuthConfigError, OSError) as exc:
        typer.echo(f"error: {path}: {exc}", err=True)
        raise typer.Exit(1) from None
    if not keys:
        typer.echo(f"no keys in {path}", err=True)
        return
    for k in keys:
        typer.echo(f"{k.name}\tid={k.key_id}\tscopes={','.join(sorted(k.scopes))}"
                   f"\tlimits={_limits_text(k.limits)}")


@keys_app.command("limit")
def keys_limit(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The key's name.")],
    limit: LimitOpt = None,
    file: FileOpt = None,
) -> None:
    """Set a key's own rate limits (none given: the server's again); the key stays
    valid, and running servers apply them within a second."""
    limits = _limits(limit)
    _change_key(file or default_key_file(), name, lambda kf: kf.set_limits(name, limits))
    typer.echo(f"{name!r}: rate limits {_limits_text(limits)}")


@keys_app.command("revoke")
def keys_revoke(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The key's name.")],
    file: FileOpt = None,
) -> None:
    """Delete a key; running servers refuse it within a second."""
    from serving.auth import AuthConfigError, KeyFile

    path = file or default_key_file()
    _change_key(path, name, lambda kf: kf.revoke(name))
    typer.echo(f"revoked {name!r}")
    try:
        left = KeyFile(path).load()
    except (AuthConfigError, OSError):
        return
    if not left:
        typer.echo(f"{path} holds no key now: a running server refuses every keyed write "
                   "and keeps anonymous writes closed until it restarts (a server started "
                   "without keys on loopback, or with --allow-anonymous-writes, takes them)",
                   err=True)


def _change_key(path: Path, name: str, change: Callable[[KeyFile], bool]) -> None:
    """Apply ``change`` to the key file at ``path``; exit 1 saying why when the file
    cannot be read or written, or holds no key ``name`` (``change`` returned False)."""
    from serving.auth import AuthConfigError, KeyFile

    try:
        found = change(KeyFile(path))
    except (AuthConfigError, OSError) as exc:
        typer.echo(f"error: {path}: {exc}", err=True)
        raise typer.Exit(1) from None
    if not found:
        typer.echo(f"error: no key named {name!r} in {path}", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.add_typer(keys_app, name="keys")
