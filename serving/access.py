"""Who is calling and what they may do: :class:`AccessControl` (keys as of now, the
anonymous policy, the DNS-rebinding guard, the rate limiter) and the caller's
:class:`Principal`, with the address helpers they use. The FastAPI dependency that
calls it, :func:`serving.auth.require`, and the settings are in :mod:`serving.auth`,
which re-exports everything here.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import math
import re
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import HTTPException, Request

from serving.api_keys import (
    _KEY,
    ANONYMOUS,
    ApiKey,
    AuthConfigError,
    KeyFile,
    Limits,
    key_table,
    limit_of,
    parse_records,
    verify_key,
)
from serving.errors import api_error
from serving.ratelimit import RateLimiter, RateLimitSettings

if TYPE_CHECKING:
    from serving.auth import AuthSettings
    from serving.metrics import ServingMetrics

__all__ = ["AccessControl", "Principal", "address_bucket", "is_loopback"]

#: an auth scheme a 401 may name (letters only: no key, no token, fits a log line)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z-]{0,19}")

# The name of the module this came from: log lines and logging settings stay as they were.
log = logging.getLogger("serving.auth")


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


def _client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _remote_address(host: str, proxied: bool = False) -> bool:
    """Whether the client at ``host`` is off this machine: an IP address that is not
    loopback, or, from a trusted proxy (``proxied``), anything but a loopback address
    (a proxy may forward ``unknown`` or an obfuscated name). Without a proxy a name or
    socket path is local (a test client's, a Unix socket's).

    >>> _remote_address("203.0.113.9"), _remote_address("127.0.0.1"), _remote_address("x")
    (True, False, False)
    >>> _remote_address("unknown", proxied=True), _remote_address("::1", proxied=True)
    (True, False)
    """
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return proxied
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_loopback


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
    #: the key's own rate limits (:attr:`serving.api_keys.ApiKey.limits`)
    limits: Limits = ()

    def limit(self, scope: str) -> tuple[float, float] | None:
        """The key's own (tokens per second, burst) of ``scope``; None: the server's."""
        return limit_of(self.limits, scope)

    @property
    def caller(self) -> str:
        """The rate-limit identity (the key id, else :func:`address_bucket`)."""
        return f"key:{self.key_id}" if self.key_id else f"addr:{address_bucket(self.client)}"


def _other_scheme(authorization: str) -> str:
    """What a 401 adds about an ``Authorization`` header that is not ``Bearer <key>``
    (the scheme named only when it is a short word: a bare key is never echoed).

    >>> _other_scheme("Basic dXNlcjpwdw==")
    "; an Authorization header of scheme 'Basic' is not read"
    >>> _other_scheme("lrk_0123abcd_secret")
    '; an Authorization header without a scheme is not read'
    >>> _other_scheme("")
    ''
    """
    scheme = authorization.strip().partition(" ")[0]
    if not scheme or scheme.lower() == "bearer":
        return ""
    if _SCHEME.fullmatch(scheme):  # never a key: keys hold digits and "_"
        return f"; an Authorization header of scheme {scheme!r} is not read"
    return "; an Authorization header without a scheme is not read"


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
        takes_writes: bool = True,
        proxied: bool = False,
    ) -> None:
        self.settings = auth
        #: client addresses come from trusted proxies' X-Forwarded-For
        self.proxied = proxied
        self.limiter = RateLimiter(limits)
        self.metrics = metrics
        self._env_keys = parse_records(auth.api_keys)
        self._file_stamp: tuple[float, int] | None = None
        #: the key file vanished at run time (anonymous writes stay closed)
        self._file_missing = False
        self._checked_at = 0.0
        self._keys_seen = False  # a key existed in this process (see anonymous_writes)
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
        # configured, decided per request (a key added at run time closes them). On
        # loopback without the explicit setting, once this process has seen a key they
        # stay closed: revoking the last key reopened them to every local process, the
        # opposite of what a vanished key file does.
        self._open_writes_allowed = auth.allow_anonymous_writes or is_loopback(host)
        if self.anonymous_writes and takes_writes:  # (without Kafka it takes none at all)
            log.warning("no API key configured: POST /v1/events accepts anonymous writes")

    @property
    def anonymous_writes(self) -> bool:
        """Whether ``POST /v1/events`` takes anonymous writes, with the keys as of now."""
        return (not self.keys and self._open_writes_allowed and not self._file_missing
                and (self.settings.allow_anonymous_writes or not self._keys_seen))

    # ------------------------------------------------------------------ keys
    def _reload_file(self, force: bool = False) -> None:
        path = self.settings.api_keys_file
        now = time.monotonic()
        if not force and now - self._checked_at < 1.0:
            return
        self._checked_at = now
        file_keys: list[ApiKey] = []
        missing = False
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
                file_keys = KeyFile(path).load(missing_ok=False)
            except FileNotFoundError as exc:
                if force:
                    raise AuthConfigError(f"API key file {path} does not exist") from exc
                # Gone at run time (deleted, unmounted, being replaced): its keys are
                # revoked, and writes stay closed to anonymous callers -- they reopened,
                # on a server that allowed them only while no key existed.
                missing = True
            except (OSError, AuthConfigError) as exc:
                if force:
                    raise AuthConfigError(f"API key file {path}: {exc}") from exc
                log.error("API key file %s unreadable (%s); keeping the previous keys%s",
                          path, exc, " (none: it was gone)" if self._file_missing else "")
                return
        try:
            keys = key_table([*self._env_keys, *file_keys])
        except AuthConfigError as exc:
            if force:
                raise
            log.error("API keys: %s; keeping the previous keys", exc)
            return
        # Only a file read whole and valid ends the "gone" state.
        if missing and not self._file_missing:
            log.error("API key file %s is gone: its keys no longer work, and POST "
                      "/v1/events takes no anonymous writes until it is back", path)
        elif self._file_missing and not missing:
            log.info("API key file %s is back", path)
        self._file_missing = missing
        if not force and set(keys) != set(self.keys):
            log.info("API keys now: %s", sorted(k.name for k in keys.values()))
            if not keys and self._open_writes_allowed and not self._file_missing:
                if self.settings.allow_anonymous_writes:
                    log.warning("the last API key is gone: POST /v1/events now accepts "
                                "anonymous writes again (LIVEREC_ALLOW_ANONYMOUS_WRITES); "
                                "add a key to close them")
                else:
                    log.warning("the last API key is gone: its writes are refused, and "
                                "POST /v1/events stays closed to anonymous writes until "
                                "the server restarts without keys")
        self.keys = keys
        self._keys_seen = self._keys_seen or bool(keys)

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
        return Principal(record.name, record.key_id, record.scopes, client, record.limits)

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

    def refresh(self) -> None:
        """Re-read the key file if it changed (at most once a second), as every key
        check does: for answers that depend on the keys without checking one."""
        self._reload_file()

    def needs_key(self, scope: str) -> bool:
        if scope == "write":
            return not self.anonymous_writes
        if scope == "read":
            return self.settings.require_read_key
        return self.settings.protect_ops

    async def authorize(self, request: Request, scope: str, presented: str | None) -> Principal:
        """Authenticate, authorise ``scope`` and take one rate-limit token."""
        client = _client_of(request)
        # Re-read the key file (at most once a second) whether or not a key came: a
        # key added since start-up must close anonymous writes for anonymous callers.
        self._reload_file()
        principal = await self._authenticate(presented, client)
        if principal is None:
            if self.needs_key(scope):
                wrong = _other_scheme(request.headers.get("authorization", ""))
                raise self._unauthorized(
                    "missing_key", f"this endpoint needs an API key with the {scope!r} scope "
                    f"(Authorization: Bearer <key> or X-API-Key: <key>){wrong}")
            if scope == "write" and not self._rebinding_safe(request):
                # A page on another site whose name was re-pointed at this server (DNS
                # rebinding) is same-origin to the browser: it could post here with
                # no preflight. Its requests still carry its own name as Host.
                raise self._denied(
                    403, "foreign_host", "anonymous writes take only requests addressed "
                    "to localhost, an IP address or a name in LIVEREC_ANONYMOUS_WRITE_HOSTS; "
                    "a key writes through any name")
            if (scope == "write" and not self.settings.allow_anonymous_writes
                    and _remote_address(client, self.proxied)):
                # Open only because the server listens on loopback: a caller a reverse
                # proxy on this host names in X-Forwarded-For is not local.
                raise self._denied(
                    403, "remote_client", "anonymous writes are open to this host's own "
                    "callers only (the server listens on loopback); a key writes from "
                    "anywhere")
            principal = Principal(ANONYMOUS, None, frozenset(), client)
        elif scope not in principal.scopes:
            raise self._denied(403, "wrong_scope",
                               f"key {principal.name!r} lacks the {scope!r} scope")
        self.take(scope, principal)
        return principal

    async def holds(self, request: Request, scope: str) -> bool:
        """Whether the request presents a valid key with ``scope`` (no refusal, no
        rate-limit token: for an open route that says more to such callers)."""
        presented = request.headers.get("x-api-key") or None
        if presented is None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            presented = token.strip() if scheme.lower() == "bearer" else None
        if not presented:
            return False
        self._reload_file()
        try:
            principal = await self._authenticate(presented, _client_of(request))
        except HTTPException:
            return False
        return principal is not None and scope in principal.scopes

    def limit(self, scope: str, principal: Principal) -> tuple[float, float]:
        """(tokens per second, burst) of ``scope`` for ``principal``: its key's own,
        else the server's ``LIVEREC_RATE_*``."""
        return principal.limit(scope) or self.limiter.settings.limit(scope)

    def take(self, scope: str, principal: Principal, cost: float = 1.0,
             retry_cost: float | None = None) -> None:
        """Take ``cost`` tokens of ``scope`` or raise 429 with ``Retry-After``: the wait
        until ``retry_cost`` tokens exist (default ``cost``), what the same request
        takes when it comes again (its key check's token included)."""
        own = principal.limit(scope)
        wait = self.limiter.check(scope, principal.caller, cost, limit=own)
        if wait > 0 and retry_cost is not None and retry_cost > cost:
            wait = self.limiter.check(scope, principal.caller, retry_cost,  # refused too
                                      limit=own)
        if wait > 0:
            if self.metrics is not None:
                self.metrics.rate_limited.labels(scope=scope).inc()
                self.metrics.key_rate_limited.labels(
                    key=self.metrics.key_label(principal.name), scope=scope).inc()
            retry = "3600" if math.isinf(wait) else str(max(1, math.ceil(wait)))
            raise api_error(429, "rate_limited",
                            f"{scope} rate limit exceeded; retry in {retry} s",
                            headers={"Retry-After": retry})
