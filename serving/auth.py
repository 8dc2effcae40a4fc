"""API keys: who may read, write and see the operator endpoints; per-key rate limits.

A key looks like ``lrk_<id>_<secret>``: the 8-hex ``id`` finds its record, the whole
key is checked against the record's salted scrypt hash with a constant-time compare.
Records (one per line, ``name:scopes:id:hash``) live in a file written by ``liverec
keys add`` or in ``LIVEREC_API_KEYS``; nothing holds a key in clear text, and a key
is never logged, echoed in an error body, exported as a metric label or shown by
``/v1/model`` (its *name* may be).

Each router states the scope it needs with :func:`require` (``read``, ``write`` or
``ops``); the dependency authenticates, authorises and takes a rate-limit token
before the request body is read. Missing or wrong key: 401 with
``WWW-Authenticate``; a key without the scope: 403; over the limit: 429 with
``Retry-After``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from serving.errors import api_error
from serving.ratelimit import RateLimiter, RateLimitSettings

if TYPE_CHECKING:
    from serving.metrics import ServingMetrics

__all__ = [
    "SCOPES",
    "AccessControl",
    "ApiKey",
    "AuthConfigError",
    "AuthSettings",
    "KeyFile",
    "Principal",
    "address_bucket",
    "hash_key",
    "is_loopback",
    "new_key",
    "require",
    "verify_key",
]

log = logging.getLogger(__name__)

#: ``read``: recommendations, items, users. ``write``: ``POST /v1/events``.
#: ``ops``: ``/metrics``, ``/v1/model`` and the dashboard (when protected).
SCOPES: tuple[str, ...] = ("read", "write", "ops")
#: the principal of a caller without a key (also its event-id scope): no key's name
ANONYMOUS = "anonymous"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_KEY = re.compile(r"^lrk_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")
# scrypt at 2**14 x 8 (16 MiB, tens of ms): slow enough to make an offline guess of a
# leaked hash costly, while a verified key is cached, so requests pay it once.
_N, _R, _P = 2**14, 8, 1


class AuthConfigError(RuntimeError):
    """The key configuration is unusable or unsafe; the message says what to do."""


class AuthSettings(BaseSettings):
    """Who may call what (env prefix ``LIVEREC_``).

    Parameters
    ----------
    api_keys_file
        ``LIVEREC_API_KEYS_FILE``: records written by ``liverec keys add``.
    api_keys
        ``LIVEREC_API_KEYS``: more records (same format), separated by newlines,
        spaces or ``;``.
    require_read_key
        Read endpoints need a ``read`` key (anonymous reads are allowed by default).
    protect_ops
        ``/metrics``, ``/v1/model`` and the dashboard need an ``ops`` key (a
        browser cannot send one to ``/dashboard``: put it behind a proxy that adds
        the header, or leave ops open on a private interface).
    allow_anonymous_writes
        ``POST /v1/events`` without a key even though the server listens on a
        non-loopback interface (refused at start-up otherwise when no key is
        configured). With keys configured, writes always need a ``write`` key. Decided
        per request from the keys as of then: a key added to the key file while the
        server runs closes anonymous writes within a second; revoking every key
        reopens them only on a loopback interface or with this setting.
    anonymous_write_hosts
        ``LIVEREC_ANONYMOUS_WRITE_HOSTS``: host names (comma-separated) an anonymous
        write may be addressed to besides ``localhost`` and IP addresses. A browser
        page whose name an attacker re-pointed at this server (DNS rebinding) is
        same-origin to the browser and posts without a CORS preflight, but its
        requests carry that name as ``Host``: anonymous writes to other names get 403
        ``foreign_host``. Writes with a key are not affected.

    Examples
    --------
    >>> AuthSettings(require_read_key=True).require_read_key
    True
    """

    model_config = SettingsConfigDict(env_prefix="LIVEREC_", extra="ignore")

    api_keys_file: Path | None = None
    api_keys: str = ""
    require_read_key: bool = False
    protect_ops: bool = False
    allow_anonymous_writes: bool = False
    anonymous_write_hosts: Annotated[tuple[str, ...], NoDecode] = ()

    @field_validator("anonymous_write_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.split(",")
        return tuple(_host_name(h) for h in v if h.strip())


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class ApiKey:
    """One key's record: never the key itself, only its salted hash."""

    name: str
    key_id: str
    scopes: frozenset[str]
    hash: str

    def record(self) -> str:
        """The line stored in a key file or ``LIVEREC_API_KEYS``."""
        return f"{self.name}:{','.join(sorted(self.scopes))}:{self.key_id}:{self.hash}"

    @classmethod
    def parse(cls, line: str) -> ApiKey:
        """Read one record; raises :class:`AuthConfigError` naming what is wrong."""
        parts = line.strip().split(":", 3)
        if len(parts) != 4:
            raise AuthConfigError("an API key record is 'name:scopes:id:hash'")
        name, scopes, key_id, digest = parts
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
        return cls(name, key_id, wanted, digest)


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
    serving.auth.AuthConfigError: two API keys are named 'ingest' (ids 0000000a, 0000000b): ...
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

    def load(self) -> list[ApiKey]:
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines()
        return [ApiKey.parse(ln) for ln in lines if ln.strip() and not ln.startswith("#")]

    def add(self, name: str, scopes: Iterable[str]) -> str:
        """Store a new key's hash under ``name``; returns the key (show it once)."""
        keys = self.load()
        if any(k.name == name for k in keys):
            raise AuthConfigError(f"a key named {name!r} exists; revoke it first")
        key_id, key = new_key()
        keys.append(ApiKey.parse(f"{name}:{','.join(sorted(set(scopes)))}:{key_id}:"
                                 f"{hash_key(key)}"))
        self._write(keys)
        return key

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


# --------------------------------------------------------------------------- access


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback interface (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(host: str) -> str:
    """The name of a ``Host`` value: no port or brackets, lower case, no trailing dot.

    >>> [_host_name(h) for h in ("LocalHost.:8000", "[::1]:80", "10.0.0.5", "")]
    ['localhost', '::1', '10.0.0.5', '']
    """
    host = host.strip()
    if host.startswith("["):
        name = host[1:host.find("]")] if "]" in host else host[1:]
    else:
        name = host.rsplit(":", 1)[0]
    return name.lower().rstrip(".")


def address_bucket(host: str) -> str:
    """The rate-limit identity of an anonymous caller at ``host``.

    An IPv4 address is its own; an IPv6 address shares its /64 network's (one host
    commonly holds a whole /64, so per-address buckets would be unlimited); an
    IPv4-mapped IPv6 address is its IPv4 address; anything else (a name, a socket
    path) is itself.

    >>> address_bucket("203.0.113.7"), address_bucket("2001:db8::1:2")
    ('203.0.113.7', '2001:db8::/64')
    >>> address_bucket("::ffff:203.0.113.7"), address_bucket("testclient")
    ('203.0.113.7', 'testclient')
    """
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's name and scopes, or ``anonymous`` from an address."""

    name: str
    key_id: str | None
    scopes: frozenset[str]
    client: str

    @property
    def caller(self) -> str:
        """The rate-limit identity (the key id, else :func:`address_bucket`)."""
        return f"key:{self.key_id}" if self.key_id else f"addr:{address_bucket(self.client)}"


class AccessControl:
    """Keys, the anonymous policy and the rate limiter of one app.

    Parameters
    ----------
    auth, limits
        The settings; ``auth.api_keys_file`` is re-read when it changes, so
        ``liverec keys revoke`` takes effect without a restart.
    host
        The interface the server listens on (anonymous writes are refused on a
        non-loopback one unless allowed explicitly).
    metrics
        Where refusals are counted.

    Raises
    ------
    AuthConfigError
        No key is configured, the host is not loopback and anonymous writes are
        not allowed; or a record is malformed.
    """

    def __init__(
        self,
        auth: AuthSettings,
        limits: RateLimitSettings,
        *,
        host: str = "127.0.0.1",
        metrics: ServingMetrics | None = None,
    ) -> None:
        self.settings = auth
        self.limiter = RateLimiter(limits)
        self.metrics = metrics
        self._env_keys = parse_records(auth.api_keys)
        self._file_stamp: tuple[float, int] | None = None
        self._checked_at = 0.0
        self.keys: dict[str, ApiKey] = {}
        self._reload_file(force=True)
        # HMAC of a presented key -> the hash it verified against: a key costs one
        # scrypt per process. The HMAC's secret is per process, so the cache holds
        # nothing that could be replayed or reversed.
        self._verified: dict[bytes, str] = {}
        self._cache_secret = secrets.token_bytes(32)
        if not self.keys and not auth.allow_anonymous_writes and not is_loopback(host):
            raise AuthConfigError(
                f"refusing to listen on {host} with POST /v1/events open to anyone: no API "
                "key is configured. Create one with `liverec keys add NAME` and point "
                "LIVEREC_API_KEYS_FILE at the file, or pass --allow-anonymous-writes "
                "(LIVEREC_ALLOW_ANONYMOUS_WRITES=true) if every peer is trusted."
            )
        if not self.keys and (auth.require_read_key or auth.protect_ops):
            raise AuthConfigError(
                "require_read_key / protect_ops need at least one API key "
                "(`liverec keys add NAME --scope read`)")
        # Whether anonymous writes may be open at all; they are while no key is
        # configured, decided per request (a key added at run time closes them).
        self._open_writes_allowed = auth.allow_anonymous_writes or is_loopback(host)
        if self.anonymous_writes:
            log.warning("no API key configured: POST /v1/events accepts anonymous writes")

    @property
    def anonymous_writes(self) -> bool:
        """Whether ``POST /v1/events`` takes anonymous writes, with the keys as of now."""
        return not self.keys and self._open_writes_allowed

    # ------------------------------------------------------------------ keys
    def _reload_file(self, force: bool = False) -> None:
        path = self.settings.api_keys_file
        now = time.monotonic()
        if not force and now - self._checked_at < 1.0:
            return
        self._checked_at = now
        file_keys: list[ApiKey] = []
        if path is not None:
            try:
                st = path.stat()
            except FileNotFoundError as exc:
                if force:
                    raise AuthConfigError(f"API key file {path} does not exist") from exc
                st = None
            stamp = None if st is None else (st.st_mtime, st.st_size)
            if not force and stamp == self._file_stamp:
                return
            self._file_stamp = stamp
            try:
                file_keys = KeyFile(path).load()
            except (OSError, AuthConfigError) as exc:
                if force:
                    raise AuthConfigError(f"API key file {path}: {exc}") from exc
                log.error("API key file %s unreadable (%s); keeping the previous keys",
                          path, exc)
                return
        try:
            keys = key_table([*self._env_keys, *file_keys])
        except AuthConfigError as exc:
            if force:
                raise
            log.error("API keys: %s; keeping the previous keys", exc)
            return
        if not force and set(keys) != set(self.keys):
            log.info("API keys now: %s", sorted(k.name for k in keys.values()))
            if not keys and self._open_writes_allowed:
                log.warning("the last API key is gone: POST /v1/events now accepts "
                            "anonymous writes again (this server listens on a loopback "
                            "address or allows them); add a key to close them")
        self.keys = keys

    async def _authenticate(self, presented: str | None, client: str) -> Principal | None:
        """The key's principal; None when no key was presented; 401 when it is wrong."""
        if presented is None:
            return None
        m = _KEY.match(presented)
        record = self.keys.get(m.group(1)) if m else None
        tag = hmac.new(self._cache_secret, presented.encode(), hashlib.sha256).digest()
        if record is None:
            # No key has that id: refused at the cost of a look-up, without taking
            # the address's "auth" tokens, which a real key's first use needs.
            raise self._unauthorized("unknown_key", "the API key is not valid")
        if self._verified.get(tag) != record.hash:
            # Uncached: a first use or a wrong secret. Limited per address, before the
            # scrypt, so guessing is slow and cannot tie up the CPU.
            self.take("auth", Principal(ANONYMOUS, None, frozenset(), client))
            ok = await asyncio.to_thread(verify_key, presented, record.hash)
            if not ok:
                raise self._unauthorized("unknown_key", "the API key is not valid")
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified[tag] = record.hash
        return Principal(record.name, record.key_id, record.scopes, client)

    def _unauthorized(self, reason: str, detail: str) -> HTTPException:
        return self._denied(401, reason, detail)

    def _denied(self, status: int, reason: str, detail: str) -> HTTPException:
        """A 401 or 403 in the API's error shape, counted by reason."""
        if self.metrics is not None:
            self.metrics.auth_failures.labels(reason=reason).inc()
        headers = {"WWW-Authenticate": 'Bearer realm="liverec"'} if status == 401 else None
        return api_error(status, reason, detail, headers=headers)

    def _rebinding_safe(self, request: Request) -> bool:
        """Whether the request's ``Host`` cannot be a rebound name: ``localhost``, an
        IP address, or a configured name (any port; case and a trailing dot ignored)."""
        name = _host_name(request.headers.get("host", ""))
        if not name:
            return False  # HTTP/1.0 without a Host: nothing shows where it was sent
        if name == "localhost" or name in self.settings.anonymous_write_hosts:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True

    def needs_key(self, scope: str) -> bool:
        if scope == "write":
            return not self.anonymous_writes
        if scope == "read":
            return self.settings.require_read_key
        return self.settings.protect_ops

    async def authorize(self, request: Request, scope: str, presented: str | None) -> Principal:
        """Authenticate, authorise ``scope`` and take one rate-limit token."""
        client = request.client.host if request.client else "unknown"
        # Re-read the key file (at most once a second) whether or not a key came: a
        # key added since start-up must close anonymous writes for anonymous callers.
        self._reload_file()
        principal = await self._authenticate(presented, client)
        if principal is None:
            if self.needs_key(scope):
                raise self._unauthorized(
                    "missing_key", f"this endpoint needs an API key with the {scope!r} scope "
                    "(Authorization: Bearer <key> or X-API-Key: <key>)")
            if scope == "write" and not self._rebinding_safe(request):
                # A page on another site whose name was re-pointed at this server (DNS
                # rebinding) is same-origin to the browser: it could post here with
                # no preflight. Its requests still carry its own name as Host.
                raise self._denied(
                    403, "foreign_host", "anonymous writes take only requests addressed "
                    "to localhost, an IP address or a name in LIVEREC_ANONYMOUS_WRITE_HOSTS; "
                    "a key writes through any name")
            principal = Principal(ANONYMOUS, None, frozenset(), client)
        elif scope not in principal.scopes:
            raise self._denied(403, "wrong_scope",
                               f"key {principal.name!r} lacks the {scope!r} scope")
        self.take(scope, principal)
        return principal

    def take(self, scope: str, principal: Principal, cost: float = 1.0) -> None:
        """Take ``cost`` tokens of ``scope`` or raise 429 with ``Retry-After``."""
        wait = self.limiter.check(scope, principal.caller, cost)
        if wait > 0:
            if self.metrics is not None:
                self.metrics.rate_limited.labels(scope=scope).inc()
            retry = "3600" if math.isinf(wait) else str(max(1, math.ceil(wait)))
            raise api_error(429, "rate_limited",
                            f"{scope} rate limit exceeded; retry in {retry} s",
                            headers={"Retry-After": retry})


# --------------------------------------------------------------------------- dependency

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer lrk_...`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key.")


def require(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that lets a request through only with ``scope`` (see module doc).

    >>> dep = require("write")
    >>> dep.__name__
    'require_write'
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    async def dependency(
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
        header: Annotated[str | None, Security(_header)],
    ) -> Principal:
        access: AccessControl = request.app.state.access
        presented = header if header is not None else (bearer.credentials if bearer else None)
        principal = await access.authorize(request, scope, presented)
        request.state.principal = principal
        return principal

    dependency.__name__ = f"require_{scope}"
    return dependency
