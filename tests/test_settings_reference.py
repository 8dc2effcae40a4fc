"""docs/SETTINGS.md is the code's settings, current and true: generated from the settings
classes (``scripts/settings_reference.py``), every field described, and every variable
it names read by pydantic-settings as it says (each is set here and read back)."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[1]


def _load_script() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(
        "settings_reference", ROOT / "scripts" / "settings_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


ref = _load_script()
CLASSES = ref.settings_classes()

#: variable text for fields whose value the generic samples below cannot be (JSON,
#: comma-separated, validated formats)
SAMPLES: dict[tuple[str, str], list[str]] = {
    ("KafkaSettings", "event_weights"): [
        '{"view": 1, "click": 1, "add_to_cart": 1, "purchase": 1}'],
    ("TrainerSettings", "model_params"): ['{"bpr": {"dim": 8}}'],
    ("TrainerSettings", "follow"): ["seqnn=/tmp/liverec-a,bpr=/tmp/liverec-b"],
    ("ServeSettings", "model_fallbacks"): ['["popularity"]'],
    ("ServeSettings", "extra_snapshots"): ["/tmp/liverec-a,/tmp/liverec-b"],
    ("ServeSettings", "cors_origins"): ["https://a.example,https://b.example"],
    ("ServeSettings", "kafka"): ['{"topic": "sample-topic", "partitions": 2}'],
    ("AuthSettings", "anonymous_write_hosts"): ["shop.example,api.example"],
}
#: other variables a field's value needs to be valid
CONTEXT: dict[tuple[str, str], dict[str, str]] = {
    ("KafkaSettings", name): {"LIVEREC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}
    for name in ("sasl_username", "sasl_password", "ssl_cafile", "ssl_certfile",
                 "ssl_keyfile", "ssl_key_password")
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for key in list(os.environ):
        if key.upper().startswith("LIVEREC_"):
            monkeypatch.delenv(key)
    return monkeypatch


def test_the_reference_is_up_to_date() -> None:
    current = ref.OUTPUT.read_text(encoding="utf-8") if ref.OUTPUT.exists() else ""
    assert current == ref.render(), f"docs/SETTINGS.md is out of date: run {ref.COMMAND}"


def test_every_field_is_described() -> None:
    missing = ref.missing_descriptions()
    assert not missing, (f"no description for {missing}: add a '#:' comment above each "
                         f"field (or a docstring entry), then run {ref.COMMAND}")
    for sc in CLASSES:  # a docstring entry naming no field is stale
        stale = set(ref.docstring_parameters(sc.cls)) - set(sc.cls.model_fields)
        assert not stale, (sc.name, stale)


def test_every_settings_class_is_found_and_says_who_reads_it() -> None:
    names = {sc.name for sc in CLASSES}
    assert {"KafkaSettings", "TrainerSettings", "FloodSettings", "ServeSettings",
            "AuthSettings", "RateLimitSettings"} <= names
    assert names <= set(ref.READ_BY), (
        f"add {sorted(names - set(ref.READ_BY))} to READ_BY in scripts/settings_reference.py")


def test_the_readme_points_at_the_reference() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/SETTINGS.md" in readme
    assert "--help` lists the rest" not in readme


def _strip_none(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _candidates(cls: type[BaseSettings], name: str) -> list[str]:
    """Variable texts to try for field ``name``, the default's text last where it has
    one."""
    if (cls.__name__, name) in SAMPLES:
        return SAMPLES[cls.__name__, name]
    info = cls.model_fields[name]
    ann = _strip_none(info.annotation)
    default = info.default
    if ann is bool:
        return ["false", "true"] if default else ["true", "false"]
    if typing.get_origin(ann) is Literal:
        return [str(a) for a in typing.get_args(ann) if a != default] + [str(default)]
    if ann is int:
        base = default if isinstance(default, int) else 3
        return [str(base + 1), str(base + 2), str(base - 1), str(base)]
    if ann is float:
        real = default if isinstance(default, float) and default else 0.4
        return [str(real / 2), str(real / 4), str(real * 2), str(real)]
    if ann is str:
        return ["sample-value", "other-value", "debug", "warning"] + (
            [default] if isinstance(default, str) else [])
    if ann is Path:
        return ["/tmp/liverec-a", "/tmp/liverec-b"]
    if ann is SecretStr:
        return ["s3cret", "other-s3cret"]
    return []


def _value(cls: type[BaseSettings], name: str, text: str) -> Any:
    """Field ``name`` given ``text`` as a keyword (decoded as the variable would be)."""
    given: Any = json.loads(text) if ref._decoding(cls.model_fields[name]) == "JSON" else text
    kwargs: dict[str, Any] = {name: given}
    return getattr(cls(**kwargs), name)


def _samples(cls: type[BaseSettings], name: str, mp: pytest.MonkeyPatch,
             default_too: bool = False) -> list[tuple[str, Any]]:
    """(text, value) pairs that are valid for field ``name``, not its default unless
    ``default_too``."""
    for var, value in CONTEXT.get((cls.__name__, name), {}).items():
        mp.setenv(var, value)
    default = getattr(cls(), name)
    out: list[tuple[str, Any]] = []
    for text in _candidates(cls, name):
        try:
            value = _value(cls, name, text)
        except ValidationError:
            continue
        if (default_too or value != default) and all(value != v for _, v in out):
            out.append((text, value))
    return out


@pytest.mark.parametrize("sc", CLASSES, ids=lambda sc: sc.name)
def test_every_documented_variable_sets_its_field(sc: Any, clean_env: pytest.MonkeyPatch
                                                  ) -> None:
    cls = sc.cls
    for name in cls.model_fields:
        samples = _samples(cls, name, clean_env)
        assert samples, (f"{sc.name}.{name}: no sample value; add one to SAMPLES in "
                         "tests/test_settings_reference.py")
        text, value = samples[0]
        for var in ref.env_names(cls, name):
            clean_env.setenv(var, text)
            try:
                got = getattr(cls(), name)
            finally:
                clean_env.delenv(var)
            assert got == value, (sc.name, name, var, text, got, value)


@pytest.mark.parametrize("sc", CLASSES, ids=lambda sc: sc.name)
def test_the_first_listed_variable_wins(sc: Any, clean_env: pytest.MonkeyPatch) -> None:
    cls = sc.cls
    checked = 0
    for name in cls.model_fields:
        names = ref.env_names(cls, name)
        if len(names) < 2:
            continue
        samples = _samples(cls, name, clean_env, default_too=True)
        assert len(samples) >= 2, (sc.name, name)
        (first_text, first_value), (other_text, _) = samples[:2]
        for later in names[1:]:
            clean_env.setenv(later, other_text)
        clean_env.setenv(names[0], first_text)
        assert getattr(cls(), name) == first_value, (sc.name, name, names)
        for var in names:
            clean_env.delenv(var)
        checked += 1
    if sc.name == "KafkaSettings":
        assert checked >= 2  # bootstrap, client, the security fields


def test_a_nested_settings_object_reads_its_json_and_its_own_variables(
    clean_env: pytest.MonkeyPatch,
) -> None:
    from serving.settings import ServeSettings

    clean_env.setenv("LIVEREC_KAFKA", '{"topic": "from-json"}')
    clean_env.setenv("LIVEREC_PARTITIONS", "7")
    clean_env.setenv("LIVEREC_KAFKA__TOPIC", "ignored")  # no nested delimiter
    kafka = ServeSettings().kafka
    assert (kafka.topic, kafka.partitions) == ("from-json", 7)


#: LIVEREC_* strings in the code that name no variable
NOT_VARIABLES = {"LIVEREC_COLUMNS"}  # online_models.datasets' column names, in __all__


def test_every_variable_the_code_reads_is_documented() -> None:
    text = ref.OUTPUT.read_text(encoding="utf-8")
    documented = set(re.findall(r"`(LIVEREC_[A-Z0-9_]+)`", text))
    found: dict[str, str] = {}
    for path in ref._source_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(
                    r"LIVEREC_[A-Z0-9_]*[A-Z0-9]", node.value):
                found.setdefault(node.value, str(path.relative_to(ROOT)))
    from liverec.env_vars import DEPLOY_VARIABLES  # the stack's, not liverec's

    missing = {v: p for v, p in found.items()
               if v not in documented | NOT_VARIABLES | DEPLOY_VARIABLES}
    assert not missing, (f"read in the code, not in docs/SETTINGS.md: {missing}; add them "
                         "to OTHER_VARIABLES in scripts/settings_reference.py")


def test_the_unknown_variable_warning_knows_exactly_the_documented_variables() -> None:
    from liverec.env_vars import known_variables

    text = ref.OUTPUT.read_text(encoding="utf-8")
    # (a name ending in "_" is a family's prefix: LIVEREC_RATE_*)
    assert known_variables() == set(re.findall(r"`(LIVEREC_[A-Z0-9_]*[A-Z0-9])`", text))


def test_a_misspelled_variable_is_named_with_the_closest_known_one(
        caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from liverec.env_vars import warn_unknown

    env = {"LIVEREC_KAFKA_BOOTSTRAPS": "kafka:9092", "LIVEREC_TOPIC": "clicks",
           "LIVEREC_ZZZ": "1", "PATH": "/bin"}
    with caplog.at_level(logging.WARNING, logger="t.env"):
        assert warn_unknown(logging.getLogger("t.env"), env) == [
            "LIVEREC_KAFKA_BOOTSTRAPS", "LIVEREC_ZZZ"]
    (line,) = [r.getMessage() for r in caplog.records]
    assert "LIVEREC_KAFKA_BOOTSTRAPS (did you mean LIVEREC_KAFKA_BOOTSTRAP?)" in line
    assert "LIVEREC_ZZZ" in line and "LIVEREC_TOPIC" not in line
    assert warn_unknown(logging.getLogger("t.env"), {"LIVEREC_TOPIC": "x"}) == []


def test_the_container_stacks_variables_are_not_flagged() -> None:
    """Every LIVEREC_* name the compose files, the Dockerfile, the Makefile and the
    scripts use is either read by liverec or listed as the stack's own."""
    from liverec.env_vars import DEPLOY_VARIABLES, known_variables, unknown_variables

    files = [*ROOT.glob("docker-compose*.yml"), ROOT / "Dockerfile", ROOT / "Makefile",
             *ROOT.glob("scripts/*.sh")]
    used = {m for f in files for m in re.findall(r"LIVEREC_[A-Z0-9_]*[A-Z0-9]",
                                                 f.read_text(encoding="utf-8"))}
    assert used - known_variables() <= DEPLOY_VARIABLES, sorted(
        used - known_variables() - DEPLOY_VARIABLES)
    assert unknown_variables(dict.fromkeys(used, "x")) == []

