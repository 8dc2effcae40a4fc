#!/usr/bin/env python
"""Write ``docs/SETTINGS.md``: every setting of every settings class, from the code.

    python scripts/settings_reference.py > docs/SETTINGS.md   # regenerate (or --write)
    python scripts/settings_reference.py --check              # exit 1 when out of date

The settings classes are found in the source (every ``class X(BaseSettings)`` under
the packages), so a new field or class is documented by regenerating. Each field's
row gives:

- its environment variables, as pydantic-settings reads them: the env prefix plus the
  field name, a validation alias instead (``AliasChoices``: each choice, the first set
  wins), and with ``populate_by_name`` the prefixed field name as well;
- the flags that set it: a ``liverec`` command's option whose parameter has the
  field's name, for the commands :data:`READ_BY` says read the class;
- its type (constraints, and how a variable's text is read: JSON, or comma-separated
  for ``NoDecode`` fields), its default;
- its description: ``Field(description=...)``, its entry under "Parameters" in the
  class docstring and the ``#:`` comment above it, where present. A field with none is
  marked undocumented, and ``tests/test_settings_reference.py`` fails until it has one.

Variables read outside the settings classes come last: options with an ``envvar`` that
set no field, and the few variables the code reads itself (:data:`OTHER_VARIABLES`).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import json
import re
import sys
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # this checkout's code, not an installed copy's
    sys.path.insert(0, str(ROOT))

from pydantic import BaseModel  # noqa: E402
from pydantic.fields import FieldInfo  # noqa: E402
from pydantic_core import PydanticUndefined  # noqa: E402
from pydantic_settings import BaseSettings, NoDecode  # noqa: E402

from liverec.env_vars import env_names  # noqa: E402

OUTPUT = ROOT / "docs" / "SETTINGS.md"
COMMAND = "python scripts/settings_reference.py > docs/SETTINGS.md"
#: where settings classes are looked for (tests excluded)
PACKAGES = ("stream", "online_models", "trainer", "serving", "liverec")

#: the ``liverec`` commands that read each settings class, in the order of the
#: reference; a command's option named like one of its classes' fields sets that field
#: (the first class that has it). A class missing here is still documented, last.
READ_BY: dict[str, tuple[str, ...]] = {
    "KafkaSettings": ("train", "serve", "replay", "features publish", "demo"),
    "TrainerSettings": ("train",),
    "FloodSettings": ("train",),
    "ServeSettings": ("serve",),
    "AuthSettings": ("serve",),
    "RateLimitSettings": ("serve",),
}
#: a command's option whose parameter is named unlike the field it sets
PARAM_FIELDS: dict[tuple[str, str], tuple[str, str]] = {
    ("train", "kafka_client"): ("KafkaSettings", "client"),
}
#: variables the code reads itself (``os.environ``), outside any settings class:
#: name -> (read by, default, description)
OTHER_VARIABLES: dict[str, tuple[str, str, str]] = {
    "LIVEREC_UMASK": (
        "every `liverec` command", "the caller's umask plus `027`",
        "permission bits masked off what `liverec` creates (snapshots, the local "
        "broker's logs, the demo's run directory hold users' click histories): an "
        "octal mask (`022`, `077`) replaces the default (`liverec/runtime.py`)"),
    "LIVEREC_API_KEYS_FILE": (
        "`liverec keys add`, `liverec keys list`, `liverec keys revoke` (`--file`)",
        "`$XDG_CONFIG_HOME/liverec/api_keys` (`~/.config/liverec/api_keys`)",
        "the key file `liverec keys` edits; `serve` reads it through "
        "[`AuthSettings`](#authsettings)"),
    "LIVEREC_CACHE_DIR": (
        "`liverec broker start`, `liverec demo`, the Kafka test fixtures",
        "`$XDG_CACHE_HOME/liverec` (`~/.cache/liverec`)",
        "Kafka's jars and the local broker's state (`stream/kafka_jars.py`)"),
    "LIVEREC_DOCKER": (
        "`liverec demo`, the Kafka test fixtures", "unset (Docker when an engine answers)",
        "`0` leaves Docker alone: the local broker runs as a plain JVM process"),
    "LIVEREC_KAFKA_IMAGE": (
        "`liverec demo`, the Kafka test fixtures (with Docker)",
        "the pinned `apache/kafka` image",
        "the broker image to run when Docker is used (`stream/docker_kafka.py`)"),
}


# ------------------------------------------------------------------ finding classes


@dataclass
class SettingsClass:
    """One settings class: the class, its source file, and its fields' ``#:`` comments."""

    cls: type[BaseSettings]
    path: Path
    comments: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.cls.__name__


def _source_files() -> Iterator[Path]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if "tests" in rel.parts or path.name.startswith("test_"):
                continue
            yield path


def _base_names(node: ast.ClassDef) -> set[str]:
    names = set()
    for base in node.bases:
        if isinstance(base, ast.Name):
            names.add(base.id)
        elif isinstance(base, ast.Attribute):
            names.add(base.attr)
    return names


def _field_comments(node: ast.ClassDef, lines: list[str]) -> dict[str, str]:
    """The ``#:`` comment of each annotated field of the class body: the ``#:`` lines
    right above it, or one after it on its own line."""
    out: dict[str, str] = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        above: list[str] = []
        i = stmt.lineno - 2
        while i >= 0 and lines[i].strip().startswith("#:"):
            above.insert(0, lines[i].strip()[2:].strip())
            i -= 1
        trailing = lines[stmt.lineno - 1].split("#:", 1)
        text = " ".join(above) or (trailing[1].strip() if len(trailing) == 2 else "")
        if text:
            out[stmt.target.id] = text
    return out


def settings_classes() -> list[SettingsClass]:
    """Every ``BaseSettings`` subclass defined in :data:`PACKAGES`, in reference order
    (:data:`READ_BY`'s, then the rest by name)."""
    found: dict[str, SettingsClass] = {}
    pending: list[tuple[Path, ast.ClassDef, list[str]]] = []
    for path in _source_files():
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        lines = text.splitlines()
        pending += [(path, node, lines) for node in ast.walk(tree)
                    if isinstance(node, ast.ClassDef)]
    names = {"BaseSettings"}
    changed = True
    while changed:  # subclasses of settings classes too
        changed = False
        for path, node, lines in pending:
            if node.name not in names and _base_names(node) & names:
                names.add(node.name)
                changed = True
                module_name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
                cls = getattr(importlib.import_module(module_name), node.name)
                if isinstance(cls, type) and issubclass(cls, BaseSettings):
                    found[node.name] = SettingsClass(cls, path, _field_comments(node, lines))
    order = list(READ_BY)
    return sorted(found.values(), key=lambda s: (
        order.index(s.name) if s.name in order else len(order), s.name))


# ------------------------------------------------------------------ one field


def _decoding(info: FieldInfo) -> str:
    """How a variable's text becomes the value: "" (as is), JSON or comma-separated."""
    if any(m is NoDecode or isinstance(m, NoDecode) for m in info.metadata):
        return "comma-separated"
    return "JSON" if _is_complex(info.annotation) else ""


def _is_complex(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_complex(a) for a in typing.get_args(annotation) if a is not type(None))
    if origin in (dict, list, tuple, set, frozenset):
        return True
    return isinstance(annotation, type) and issubclass(annotation, BaseModel | dict | list)


def type_name(annotation: Any) -> str:
    """``annotation`` as a short name: ``int``, ``str | None``, ``dict[str, float]``,
    ``text | json`` (a Literal's values)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "None"
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is Any:
        return "Any"
    if isinstance(annotation, type):
        return {"SecretStr": "secret str"}.get(annotation.__name__, annotation.__name__)
    return str(annotation)


_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"),
           ("min_length", "length >="), ("max_length", "length <="))


def constraints(info: FieldInfo) -> str:
    """``info``'s bounds, e.g. ``>= 1, <= 1024``."""
    out = []
    for item in info.metadata:
        for attr, sign in _BOUNDS:
            value = getattr(item, attr, None)
            if value is not None:
                out.append(f"{sign} {_number(value)}")
    return ", ".join(out)


def _number(value: Any) -> str:
    return f"{value:,}".replace(",", "_") if isinstance(value, int) and value >= 10_000 \
        else str(value)


def default_text(info: FieldInfo) -> str:
    """``info``'s default as an operator would write it (a factory that builds another
    settings object reads that object's variables)."""
    factory = info.default_factory
    if factory is not None:
        if isinstance(factory, type) and issubclass(factory, BaseSettings):
            return f"from the [`{factory.__name__}`](#{factory.__name__.lower()}) variables"
        value = factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, dict | tuple | list) and _decoding(info) == "comma-separated":
        items = [f"{k}={v}" for k, v in value.items()] if isinstance(value, dict) else value
        return f"`{','.join(map(str, items))}`" if items else "none"
    if isinstance(value, dict | tuple | list):
        return f"`{json.dumps(value, default=str)}`"
    if isinstance(value, str) and not value:
        return '`""` (empty)'
    if isinstance(value, int | float):
        return f"`{value}`"
    return f"`{value}`"


# ------------------------------------------------------------------ descriptions

_ROLE = re.compile(r":[a-z]+:`(~?)([^`<]+?)(?:\s*<[^>]+>)?`")


def markdown(text: str) -> str:
    """reST bits of a docstring or comment as Markdown, on one line."""
    text = _ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`",
                     text)
    text = text.replace("``", "`")
    return " ".join(text.split())


def docstring_parameters(cls: type) -> dict[str, str]:
    """The "Parameters" section of a numpydoc docstring: name -> description (an entry
    naming several fields, ``a, b``, describes each)."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    lines = doc.splitlines()
    out: dict[str, str] = {}
    try:
        start = next(i for i, line in enumerate(lines[:-1])
                     if line.strip() == "Parameters" and set(lines[i + 1].strip()) == {"-"})
    except StopIteration:
        return out
    names: list[str] = []
    body: list[str] = []

    def flush() -> None:
        for n in names:
            out[n] = " ".join(body)

    for i in range(start + 2, len(lines)):
        line = lines[i]
        if i + 1 < len(lines) and line.strip() and set(lines[i + 1].strip()) == {"-"}:
            break  # the next section
        if line and not line[0].isspace():
            flush()
            names, body = [n.strip() for n in line.split(",") if n.strip()], []
        elif line.strip():
            body.append(line.strip())
    flush()
    return out


def summary(cls: type) -> str:
    """The first paragraph of ``cls``'s docstring."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    return markdown(doc.split("\n\n", 1)[0])


def _sentence(text: str) -> str:
    text = markdown(text)
    if text and text[0].islower():
        text = text[0].upper() + text[1:]
    return text if not text or text.endswith((".", "!", "?", ")")) else text + "."


def descriptions(sc: SettingsClass) -> dict[str, str | None]:
    """Each field's description (None where the code has none): its ``description``,
    its docstring entry and its ``#:`` comment, in that order, where present."""
    params = docstring_parameters(sc.cls)
    out: dict[str, str | None] = {}
    for name, info in sc.cls.model_fields.items():
        parts = [info.description, params.get(name), sc.comments.get(name)]
        texts = list(dict.fromkeys(_sentence(p) for p in parts if p and p.strip()))
        out[name] = " ".join(texts) or None
    return out


def missing_descriptions() -> list[str]:
    """``Class.field`` of every field without a description."""
    return [f"{sc.name}.{name}" for sc in settings_classes()
            for name, text in descriptions(sc).items() if text is None]


# ------------------------------------------------------------------ commands


@dataclass
class Flags:
    """Which command options set which fields, and the options with an ``envvar`` that
    set none (variable -> [(command, flag, default, help)])."""

    by_field: dict[tuple[str, str], list[str]]
    unmapped: dict[str, list[tuple[str, str, Any, str]]]


def _commands() -> Iterator[tuple[str, Any]]:
    import typer

    from liverec import cli

    def walk(prefix: str, group: Any) -> Iterator[tuple[str, Any]]:
        for name in sorted(group.commands):
            cmd = group.commands[name]
            path = f"{prefix} {name}".strip()
            if getattr(cmd, "commands", None):
                yield from walk(path, cmd)
            else:
                yield path, cmd

    yield from walk("", typer.main.get_command(cli.app))


def _flag(param: Any) -> str:
    text = ", ".join(param.opts)
    if getattr(param, "secondary_opts", None):
        text += "/" + "/".join(param.secondary_opts)
    return text


def command_flags(classes: list[SettingsClass]) -> Flags:
    by_name = {sc.name: sc.cls for sc in classes}
    by_field: dict[tuple[str, str], list[str]] = {}
    unmapped: dict[str, list[tuple[str, str, Any, str]]] = {}
    for command, cmd in _commands():
        readers = [c for c, commands in READ_BY.items() if command in commands and c in by_name]
        for param in cmd.params:
            if getattr(param, "param_type_name", "") != "option":
                continue
            target = PARAM_FIELDS.get((command, param.name or ""))
            if target is None:
                owner = next((c for c in readers if param.name in by_name[c].model_fields),
                             None)
                target = (owner, param.name or "") if owner else None
            if target is not None:
                by_field.setdefault(target, []).append(f"{command} {_flag(param)}")
                continue
            envvars = param.envvar if isinstance(param.envvar, list | tuple) else (
                [param.envvar] if param.envvar else [])
            for var in envvars:
                unmapped.setdefault(var, []).append(
                    (command, _flag(param), param.default, param.help or ""))
    return Flags(by_field, unmapped)


# ------------------------------------------------------------------ rendering


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code_list(items: list[str]) -> str:
    return ", ".join(f"`{i}`" for i in items)


HEADER = f"""\
# Settings reference

<!-- Generated by scripts/settings_reference.py from the settings classes and the
     liverec commands; do not edit by hand. Regenerate: {COMMAND} -->

Every setting of `liverec`, one table per settings class (pydantic-settings), generated
from the code. To regenerate it: `{COMMAND}`
(`tests/test_settings_reference.py` fails when it is out of date).

- **Variables**: each field is read from the environment variables listed; where
  several are listed, the first one set wins. Their names are not case-sensitive
  (those under "Other variables" are).
- **Flags**: a command-line flag, where a command has one, wins over the variables
  (`liverec <command> --help` shows the flags, not every variable).
- **Type**: *JSON* fields take their variable's value as JSON
  (`LIVEREC_EVENT_WEIGHTS='{{"view": 1, "click": 2, "add_to_cart": 3, "purchase": 5}}'`),
  *comma-separated* ones a comma-separated list
  (`LIVEREC_CORS_ORIGINS=https://a.example,https://b.example`). Values are checked
  when the command starts: a bad one stops it with the reason.
- The variables of the compose files (published ports, images) are in README.md,
  "Containers".
"""


def render() -> str:
    classes = settings_classes()
    flags = command_flags(classes)
    out = [HEADER]
    out.append("| Settings | Variables | Read by |")
    out.append("|---|---|---|")
    for sc in classes:
        prefix = sc.cls.model_config.get("env_prefix", "") or ""
        commands = READ_BY.get(sc.name, ())
        read_by = ", ".join(f"`liverec {c}`" for c in commands) or "-"
        out.append(f"| [`{sc.name}`](#{sc.name.lower()}) | `{prefix}*` | {read_by} |")
    out.append("| [Other variables](#other-variables) | | |")
    for sc in classes:
        out += ["", f"## {sc.name}", ""]
        where = sc.path.relative_to(ROOT).as_posix()
        commands = READ_BY.get(sc.name, ())
        read = (f" Read by {', '.join(f'`liverec {c}`' for c in commands)}."
                if commands else "")
        out.append(f"`{sc.cls.__module__}.{sc.name}` ([{where}](../{where})): "
                   f"{summary(sc.cls)}{read}")
        out += ["", "| Field | Variables | Flags | Type | Default | Description |",
                "|---|---|---|---|---|---|"]
        texts = descriptions(sc)
        for name, info in sc.cls.model_fields.items():
            kind = type_name(info.annotation)
            decoding = _decoding(info)
            if decoding == "JSON" and isinstance(info.annotation, type) and issubclass(
                    info.annotation, BaseModel):
                decoding = "JSON object of its fields by name; the rest from their variables"
            bounds = constraints(info)
            kind_cell = f"`{kind}`" + (f" ({bounds})" if bounds else "") + (
                f", {decoding}" if decoding else "")
            row = [
                f"`{name}`",
                ", ".join(f"`{v}`" for v in env_names(sc.cls, name)),
                ", ".join(f"`{f}`" for f in flags.by_field.get((sc.name, name), [])) or "-",
                kind_cell,
                default_text(info),
                texts[name] or "**undocumented**",
            ]
            out.append("| " + " | ".join(_cell(c) for c in row) + " |")
    out += ["", "## Other variables", "",
            "Read outside the settings classes: by a command's option, or by the code "
            "itself.", "",
            "| Variable | Read by | Flags | Default | Description |",
            "|---|---|---|---|---|"]
    rows: dict[str, list[str]] = {}
    for var, uses in sorted(flags.unmapped.items()):
        rows[var] = [
            f"`{var}`",
            ", ".join(dict.fromkeys(f"`liverec {c}`" for c, _, _, _ in uses)),
            ", ".join(f"`{c} {f}`" for c, f, _, _ in uses),
            ", ".join(dict.fromkeys(f"`{d}`" for _, _, d, _ in uses)),
            " ".join(dict.fromkeys(_sentence(h) for _, _, _, h in uses)),
        ]
    for var, (read_by, default, text) in OTHER_VARIABLES.items():
        rows.setdefault(var, [f"`{var}`", read_by, "-", default, _sentence(text)])
    for var in sorted(rows):
        out.append("| " + " | ".join(_cell(c) for c in rows[var]) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help=f"exit 1 when {OUTPUT.relative_to(ROOT)} is out of date")
    mode.add_argument("--write", action="store_true",
                      help=f"write {OUTPUT.relative_to(ROOT)} instead of printing")
    args = parser.parse_args(argv)
    text = render()
    missing = missing_descriptions()
    for name in missing:
        print(f"warning: {name} has no description: add a '#:' comment above it",
              file=sys.stderr)
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT.relative_to(ROOT)} is out of date: run {COMMAND}",
                  file=sys.stderr)
            return 1
        return 1 if missing else 0
    if args.write:
        OUTPUT.parent.mkdir(parents=True, exist_ok=True)
        OUTPUT.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
