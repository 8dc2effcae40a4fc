"""The ``LIVEREC_*`` environment variables liverec reads, and a warning for the others.

pydantic-settings ignores a variable no field reads (``extra="ignore"``), so a typo --
``LIVEREC_KAFKA_BOOTSTRAPS`` -- leaves its setting at the default without a word: a
server started so ran without Kafka and said ready. :func:`warn_unknown` logs one
WARNING at start naming every ``LIVEREC_*`` variable that nothing reads, with the
closest known name. ``docs/SETTINGS.md`` lists the known ones (a test keeps the two
equal).
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import re
from collections.abc import Iterable, Mapping

from pydantic import AliasChoices, AliasPath, ValidationError
from pydantic_settings import BaseSettings, SettingsError

__all__ = ["env_names", "known_variables", "settings_errors", "unknown_variables",
           "warn_unknown"]

# inputs not repeated in an error line (a secret given in the wrong shape stays secret)
_SECRET = re.compile(r"password|secret|key|token", re.IGNORECASE)

#: every settings class (module:class), each field read from the environment
SETTINGS_CLASSES = (
    "stream.settings:KafkaSettings",
    "trainer.settings:TrainerSettings",
    "trainer.flood:FloodSettings",
    "serving.settings:ServeSettings",
    "serving.auth:AuthSettings",
    "serving.ratelimit:RateLimitSettings",
)
#: variables read outside the settings classes (docs/SETTINGS.md, "Other variables")
OTHER_VARIABLES = frozenset({
    "LIVEREC_UMASK", "LIVEREC_API_KEYS_FILE", "LIVEREC_CACHE_DIR", "LIVEREC_DOCKER",
    "LIVEREC_KAFKA_IMAGE", "LIVEREC_LOG_LEVEL", "LIVEREC_LOG_FORMAT",
})


#: variables of the container stack and the build scripts (docker-compose*.yml, the
#: Dockerfile, scripts/): not read by liverec, but often exported in the same shell
DEPLOY_VARIABLES = frozenset({
    "LIVEREC_BASE_IMAGE", "LIVEREC_BIND_ADDR", "LIVEREC_DOCKERD_LOG",
    "LIVEREC_DOCKER_DATA_ROOT", "LIVEREC_GRAFANA_IMAGE", "LIVEREC_GRAFANA_PORT",
    "LIVEREC_IMAGE", "LIVEREC_KAFKA_HEAP_OPTS", "LIVEREC_KAFKA_HOST", "LIVEREC_KAFKA_PORT",
    "LIVEREC_LOCAL_BASE_TAG", "LIVEREC_LOCAL_KAFKA_TAG", "LIVEREC_LOCAL_PROMETHEUS_TAG",
    "LIVEREC_PROMETHEUS_IMAGE", "LIVEREC_PROMETHEUS_PORT", "LIVEREC_REBUILD_BASE",
    "LIVEREC_REPLAY_DATA", "LIVEREC_SERVING_PORTS", "LIVEREC_TAG",
    "LIVEREC_TRAINER_METRICS_PORT",
})


def env_names(cls: type[BaseSettings], name: str) -> list[str]:
    """The environment variables pydantic-settings reads field ``name`` of ``cls`` from,
    the one it prefers first."""
    config = cls.model_config
    prefix = config.get("env_prefix", "") or ""
    info = cls.model_fields[name]
    alias = info.validation_alias
    names: list[str] = []
    if isinstance(alias, AliasChoices):
        for choice in alias.choices:
            if isinstance(choice, str):
                names.append(choice)
            elif isinstance(choice, AliasPath) and isinstance(choice.path[0], str):
                names.append(choice.path[0])
    elif isinstance(alias, AliasPath) and isinstance(alias.path[0], str):
        names.append(alias.path[0])
    elif isinstance(alias, str):
        names.append(alias)
    if not names or config.get("populate_by_name") or config.get("validate_by_name"):
        names.append(prefix + name)
    if not config.get("case_sensitive", False):
        names = [n.upper() for n in names]
    return list(dict.fromkeys(names))


def settings_errors(exc: Exception, given: Iterable[str] = (),
                    cls: type[BaseSettings] | None = None) -> list[str]:
    r"""One line per problem of building a settings class (``cls``, else the one the
    error names), each naming where the value came from: its command-line option when
    the field is in ``given``, else its ``LIVEREC_*`` variables (pydantic's own text
    names the field and the class only).

    >>> from stream.settings import KafkaSettings
    >>> try:
    ...     KafkaSettings(max_id_chars=512, partitions=0)
    ... except ValidationError as exc:
    ...     print("\n".join(settings_errors(exc, given=["partitions"])))
    --partitions: Input should be greater than or equal to 1 (got 0)
    LIVEREC_MAX_ID_CHARS: Input should be less than or equal to 256 (got 512)
    """
    given = set(given)
    bad = re.search(r'field "(\w+)"', str(exc)) if isinstance(exc, SettingsError) else None
    if cls is None and isinstance(exc, ValidationError):
        cls = next((c for c in _settings_classes() if c.__name__ == exc.title), None)
    elif cls is None and bad is not None:
        cls = next((c for c in _settings_classes() if bad.group(1) in c.model_fields), None)
    fields = cls.model_fields if cls is not None else {}

    def where(field: str) -> str:
        if field in given:
            return "--" + field.replace("_", "-")
        if cls is not None and field in fields:
            return " / ".join(env_names(cls, field))
        # a field of another class the one named builds inside (ServeSettings makes
        # its KafkaSettings in a validator), else an alias: the variable's own name
        owner = next((c for c in _settings_classes() if field in c.model_fields), None)
        return " / ".join(env_names(owner, field)) if owner is not None else field

    if isinstance(exc, SettingsError):  # a variable that must be JSON and is not
        cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
        return [f"{where(bad.group(1)) if bad else 'a setting'}: cannot be read{cause}"]
    if not isinstance(exc, ValidationError):
        return [str(exc)]
    lines = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else None
        msg = error["msg"].removeprefix("Value error, ")
        value = error.get("input")
        shown = (f" (got {value!r})" if field is not None and not _SECRET.search(field)
                 and isinstance(value, str | int | float) else "")
        lines.append(f"{where(field)}: {msg}{shown}" if field else msg)
    return lines


def _settings_classes() -> list[type[BaseSettings]]:
    out = []
    for spec in SETTINGS_CLASSES:
        module, _, name = spec.partition(":")
        out.append(getattr(importlib.import_module(module), name))
    return out


def known_variables() -> set[str]:
    """Every ``LIVEREC_*`` variable some part of liverec reads."""
    known = set(OTHER_VARIABLES)
    for cls in _settings_classes():
        for field in cls.model_fields:
            known.update(n for n in env_names(cls, field) if n.startswith("LIVEREC_"))
    return known


def unknown_variables(environ: Mapping[str, str] | None = None,
                      known: set[str] | None = None) -> list[str]:
    """The ``LIVEREC_*`` variables of ``environ`` (default: this process's) that
    nothing reads (``known``: :func:`known_variables`, when the caller has it), sorted."""
    env = os.environ if environ is None else environ
    ok = (known_variables() if known is None else known) | DEPLOY_VARIABLES
    return sorted(k for k in env if k.upper().startswith("LIVEREC_") and k.upper() not in ok)


def warn_unknown(log: logging.Logger, environ: Mapping[str, str] | None = None) -> list[str]:
    """Log one WARNING naming the unread ``LIVEREC_*`` variables (with the closest known
    name each); returns them."""
    known = known_variables()
    unknown = unknown_variables(environ, known)
    if unknown:
        names = sorted(known)
        parts = []
        for name in unknown:
            close = difflib.get_close_matches(name.upper(), names, n=1, cutoff=0.75)
            parts.append(f"{name} (did you mean {close[0]}?)" if close else name)
        log.warning("ignoring environment variables that no setting reads: %s "
                    "(docs/SETTINGS.md lists liverec's; README's \"Production shape\" "
                    "the container stack's)", ", ".join(parts))
    return unknown
