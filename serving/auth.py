"""API keys: who may read, write and see the operator endpoints; per-key rate limits.

A key looks like ``lrk_<id>_<secret>``: the 8-hex ``id`` finds its record, the whole
key is checked against the record's salted scrypt hash with a constant-time compare.
Records (one per line, ``name:scopes:id:hash``, then ``:limits`` for a key with rate
limits of its own) live in a file written by ``liverec
keys add`` or in ``LIVEREC_API_KEYS``; nothing holds a key in clear text, and a key
is never logged, echoed in an error body, exported as a metric label or shown by
``/v1/model`` (its *name* may be).

Each router states the scope it needs with :func:`require` (``read``, ``write`` or
``ops``); the dependency authenticates, authorises and takes a rate-limit token
before the request body is read. Missing or wrong key: 401 with
``WWW-Authenticate``; a key without the scope: 403; over the limit: 429 with
``Retry-After``.

This module holds the settings (:class:`AuthSettings`) and the dependency
(:func:`require`) and re-exports the parts, which live beside it:
:mod:`serving.api_keys` (keys, their hashes, the key file) and :mod:`serving.access`
(:class:`AccessControl`, :class:`Principal`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from serving.access import AccessControl, Principal, _host_name, address_bucket, is_loopback
from serving.api_keys import (
    ANONYMOUS,
    SCOPES,
    ApiKey,
    AuthConfigError,
    KeyFile,
    format_limits,
    hash_key,
    key_table,
    new_key,
    parse_limits,
    parse_records,
    verify_key,
)

__all__ = [
    "ANONYMOUS",
    "SCOPES",
    "AccessControl",
    "ApiKey",
    "AuthConfigError",
    "AuthSettings",
    "KeyFile",
    "Principal",
    "address_bucket",
    "format_limits",
    "hash_key",
    "is_loopback",
    "key_table",
    "new_key",
    "parse_limits",
    "parse_records",
    "require",
    "verify_key",
]


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
        reopens them only with this setting (on a loopback interface without it, they
        stay closed until a restart without keys, as when the key file vanishes).
        Without this setting, a loopback server takes anonymous writes from loopback
        callers only: one that a trusted proxy (``LIVEREC_FORWARDED_ALLOW_IPS``) names
        as remote gets 403 ``remote_client``.
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
