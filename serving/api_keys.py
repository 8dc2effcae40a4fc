"""API keys and their records: the scopes, the key format, salted scrypt hashes, the
records of ``LIVEREC_API_KEYS`` and the key file ``liverec keys`` edits
(:class:`KeyFile`). :mod:`serving.auth` re-exports everything here.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import math
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

__all__ = [
    "ANONYMOUS",
    "SCOPES",
    "ApiKey",
    "AuthConfigError",
    "KeyFile",
    "format_limits",
    "hash_key",
    "key_table",
    "limit_of",
    "new_key",
    "parse_limits",
    "parse_records",
    "verify_key",
]

#: ``read``: recommendations, items, users. ``write``: ``POST /v1/events``.
#: ``ops``: ``/metrics``, ``/v1/model`` and the dashboard (when protected).
SCOPES: tuple[str, ...] = ("read", "write", "ops")
#: the principal of a caller without a key (also its event-id scope): no key's name
ANONYMOUS = "anonymous"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_LIMIT = re.compile(r"^(\w+)=([^/]+)/(.+)$")
#: a key's own rate limits: ``(scope, tokens per second, burst)`` per scope it sets
Limits = tuple[tuple[str, float, float], ...]
_KEY = re.compile(r"^lrk_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")
# scrypt at 2**14 x 8 (16 MiB, tens of ms): slow enough to make an offline guess of a
# leaked hash costly, while a verified key is cached, so requests pay it once.
_N, _R, _P = 2**14, 8, 1


class AuthConfigError(RuntimeError):
    """The key configuration is unusable or unsafe; the message says what to do."""


@dataclass(frozen=True)
class ApiKey:
    """One key's record: never the key itself, only its salted hash."""

    name: str
    key_id: str
    scopes: frozenset[str]
    hash: str
    #: the key's own rate limits, in place of the server's ``LIVEREC_RATE_*`` for the
    #: scopes they name (see :func:`parse_limits`)
    limits: Limits = ()

    def limit(self, scope: str) -> tuple[float, float] | None:
        """The key's own (tokens per second, burst) of ``scope``; None: the server's."""
        return limit_of(self.limits, scope)

    def record(self) -> str:
        """The line stored in a key file or ``LIVEREC_API_KEYS``."""
        line = f"{self.name}:{','.join(sorted(self.scopes))}:{self.key_id}:{self.hash}"
        return f"{line}:{format_limits(self.limits)}" if self.limits else line

    @classmethod
    def parse(cls, line: str) -> ApiKey:
        """Read one record; raises :class:`AuthConfigError` naming what is wrong."""
        parts = line.strip().split(":", 4)
        if len(parts) not in (4, 5):
            raise AuthConfigError("an API key record is 'name:scopes:id:hash[:limits]'")
        name, scopes, key_id, digest = parts[:4]
        wanted = frozenset(s for s in scopes.split(",") if s)
        if not _NAME.match(name):
            raise AuthConfigError(f"bad key name {name[:64]!r}")
        if name == ANONYMOUS:
            raise AuthConfigError(f"the key name {ANONYMOUS!r} is reserved for callers "
                                  "without a key (their event ids are scoped under it)")
        if not wanted or not wanted <= set(SCOPES):
            raise AuthConfigError(f"key {name!r}: scopes must be among {', '.join(SCOPES)}")
        if not re.fullmatch(r"[0-9a-f]{8}", key_id) or not digest.startswith("scrypt$"):
            raise AuthConfigError(f"key {name!r}: malformed id or hash")
        try:
            limits = parse_limits(parts[4]) if len(parts) == 5 else ()
        except ValueError as exc:
            raise AuthConfigError(f"key {name!r}: {exc}") from None
        return cls(name, key_id, wanted, digest, limits)


def parse_limits(text: str) -> Limits:
    """A key's own rate limits from ``scope=rate/burst`` items, comma-separated.

    ``rate`` is tokens per second (a write costs one per event), ``burst`` the bucket's
    size; a rate of 0 lifts the scope's limit for the key. Raises ``ValueError``.

    >>> parse_limits("write=5000/10000,read=0/1")
    (('read', 0.0, 1.0), ('write', 5000.0, 10000.0))
    >>> parse_limits("write=5")
    Traceback (most recent call last):
    ...
    ValueError: a rate limit is 'scope=rate/burst' (say write=50/200), not 'write=5'
    """
    out: dict[str, tuple[float, float]] = {}
    for item in filter(None, text.split(",")):
        m = _LIMIT.match(item.strip())
        if m is None:
            raise ValueError(f"a rate limit is 'scope=rate/burst' (say write=50/200), "
                             f"not {item[:40]!r}")
        scope = m.group(1)
        try:
            rate, burst = float(m.group(2)), float(m.group(3))
        except ValueError:
            raise ValueError(f"{item[:40]!r}: rate and burst are numbers") from None
        if scope not in SCOPES:
            raise ValueError(f"a key's rate limit scope is one of {', '.join(SCOPES)}, "
                             f"not {scope!r}")
        if scope in out:
            raise ValueError(f"two rate limits for the {scope!r} scope")
        if not (math.isfinite(rate) and math.isfinite(burst)) or rate < 0 or burst < 1:
            raise ValueError(f"{item[:40]!r}: the rate must be at least 0 and the burst "
                             "at least 1, both finite")
        out[scope] = (rate, burst)
    return tuple((s, *out[s]) for s in sorted(out))


def limit_of(limits: Limits, scope: str) -> tuple[float, float] | None:
    """``(tokens per second, burst)`` of ``scope`` in ``limits``; None when they set none.

    >>> limit_of((("write", 2.5, 10.0),), "write"), limit_of((), "read")
    ((2.5, 10.0), None)
    """
    return next(((r, b) for s, r, b in limits if s == scope), None)


def format_limits(limits: Limits) -> str:
    """The record field of ``limits`` (:func:`parse_limits` reads it back).

    >>> format_limits((("read", 0.0, 1.0), ("write", 2.5, 10.0)))
    'read=0/1,write=2.5/10'
    """
    return ",".join(f"{s}={r:.15g}/{b:.15g}" for s, r, b in limits)


def new_key() -> tuple[str, str]:
    """A fresh ``(key_id, key)``; the key is shown to its owner once and never stored."""
    key_id = secrets.token_hex(4)
    return key_id, f"lrk_{key_id}_{secrets.token_urlsafe(32)}"


def hash_key(key: str, *, salt: bytes | None = None) -> str:
    """``scrypt$n$r$p$salt$hash`` of ``key`` with a random 16-byte salt.

    >>> h = hash_key("lrk_00000000_" + "x" * 43)
    >>> h.startswith("scrypt$16384$8$1$"), verify_key("lrk_00000000_" + "x" * 43, h)
    (True, True)
    """
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.scrypt(key.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    b64 = base64.urlsafe_b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_key(key: str, stored: str) -> bool:
    """Whether ``key`` hashes to ``stored`` (compared in constant time)."""
    try:
        _, n, r, p, salt, digest = stored.split("$")
        want = base64.urlsafe_b64decode(digest)
        got = hashlib.scrypt(key.encode(), salt=base64.urlsafe_b64decode(salt), n=int(n),
                             r=int(r), p=int(p), dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def parse_records(text: str) -> list[ApiKey]:
    """Records from a file's or variable's text (blank lines and ``#`` comments skipped)."""
    out: list[ApiKey] = []
    for line in re.split(r"[\n;]+", text):
        line = line.split("#", 1)[0]
        out.extend(ApiKey.parse(word) for word in line.split())
    return out


def key_table(records: Iterable[ApiKey]) -> dict[str, ApiKey]:
    """The records by key id, from all sources; a record given twice counts once.

    Names must be unique: a key's name scopes its event ids (the server's
    de-duplication) and names it in logs and metrics, so two keys under one name, say
    one in ``LIVEREC_API_KEYS`` and one in the key file, would share a namespace.

    >>> a = ApiKey("ingest", "0000000a", frozenset({"write"}), "scrypt$a")
    >>> sorted(key_table([a, a]))
    ['0000000a']
    >>> key_table([a, ApiKey("ingest", "0000000b", frozenset({"read"}), "scrypt$b")])
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    serving.api_keys.AuthConfigError: two API keys are named 'ingest' (ids 0000000a, 0000000b): ...
    """
    table: dict[str, ApiKey] = {}
    by_name: dict[str, ApiKey] = {}
    for key in records:
        seen = table.get(key.key_id) or by_name.get(key.name)
        if seen is not None and seen != key:
            what = (f"named {key.name!r} (ids {seen.key_id}, {key.key_id})"
                    if seen.key_id != key.key_id
                    else f"with id {key.key_id} and different records")
            raise AuthConfigError(
                f"two API keys are {what}: a name must be unique across "
                "LIVEREC_API_KEYS and the key file")
        table[key.key_id] = by_name[key.name] = key
    return table


class KeyFile:
    """The key file ``liverec keys`` edits: one record per line, written atomically.

    Examples
    --------
    >>> import tempfile
    >>> kf = KeyFile(Path(tempfile.mkdtemp()) / "keys")
    >>> key = kf.add("ingest", {"write"})
    >>> [(k.name, sorted(k.scopes)) for k in kf.load()], key.startswith("lrk_")
    ([('ingest', ['write'])], True)
    >>> kf.revoke("ingest"), kf.load()
    (True, [])
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self, missing_ok: bool = True) -> list[ApiKey]:
        """The file's keys; none for a missing file, or ``FileNotFoundError`` without
        ``missing_ok``."""
        if missing_ok and not self.path.exists():
            return []
        # A comment may end a record's line too ("# " never occurs in a record).
        lines = [ln.split("#", 1)[0].strip() for ln in self.path.read_text().splitlines()]
        return [ApiKey.parse(ln) for ln in lines if ln]

    def add(self, name: str, scopes: Iterable[str], limits: Limits = ()) -> str:
        """Store a new key's hash under ``name`` (with its own rate ``limits``);
        returns the key (show it once)."""
        keys = self.load()
        if any(k.name == name for k in keys):
            raise AuthConfigError(f"a key named {name!r} exists; revoke it first")
        key_id, key = new_key()
        keys.append(ApiKey.parse(f"{name}:{','.join(sorted(set(scopes)))}:{key_id}:"
                                 f"{hash_key(key)}"))
        keys[-1] = replace(keys[-1], limits=parse_limits(format_limits(limits)))
        self._write(keys)
        return key

    def set_limits(self, name: str, limits: Limits) -> bool:
        """Replace the rate limits of the key ``name`` (``()``: the server's again);
        False when there is no such key. The key itself stays valid."""
        keys = self.load()
        if not any(k.name == name for k in keys):
            return False
        limits = parse_limits(format_limits(limits))  # as the file will read them back
        self._write([replace(k, limits=limits) if k.name == name else k for k in keys])
        return True

    def revoke(self, name: str) -> bool:
        keys = self.load()
        kept = [k for k in keys if k.name != name]
        if len(kept) == len(keys):
            return False
        self._write(kept)
        return True

    def _write(self, keys: list[ApiKey]) -> None:
        # Owner-only from the first byte: a file written then chmod-ed is readable by
        # others in between under a umask of 022.
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        header = f"# liverec API keys (salted scrypt hashes), {datetime.now(UTC):%Y-%m-%d}\n"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # a leftover of a crashed write may have other modes
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(header + "".join(k.record() + "\n" for k in keys))
        tmp.replace(self.path)
