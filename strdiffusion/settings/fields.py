"""Settings dataclasses as the one source of a stage's options.

A field made with :func:`option` carries its default, help text, choices and the config key it is
read from; everything else is derived from the fields:

- the command-line options, one per field, ``--<name with dashes>``: :mod:`strdiffusion.stages.options`.
  A field made with :func:`nested` (another settings object) adds that object's options in a group.
- :func:`strdiffusion.stages.options.from_parsed`: the object back from the parsed options.
- :func:`from_config`: the object from the validated config: ``key`` is a dotted path such as
  ``train.lr`` or ``datasets.{dataset}.source`` (formatted with the job's wildcards); a key the config
  leaves out keeps the default, a field without ``key`` is not read from the config. A field with
  ``when=(name, value)`` is read only when field ``name`` has that value (``source`` is ``folder``):
  other settings keep its default, so a job does not change when a key it ignores does.
- :func:`to_argv` renders the config-read fields as options again (a switch only when on, an empty
  value only when it differs from the default, a ``when`` field only when it applies), or with ``every``
  each command-line field, and :func:`command_line` quotes them for a shell: the one place where the
  workflow's values, paths among them, are quoted. Parsing the rendered options gives the object back.
- :func:`to_record` and :func:`from_record`: the object as plain data (a checkpoint stores its training
  job so) and back.
"""
from __future__ import annotations

import dataclasses
import shlex
import types
import typing

from strdiffusion.settings.values import TextValue

REQUIRED = dataclasses.MISSING


def option(default=REQUIRED, help: str = "", *, key: str | None = None, choices=None, cli: bool = True,
           when: tuple[str, object] | None = None):
    """A settings field: ``default`` (none: required), ``help``, ``choices``, the config ``key`` it is read
    from (None: command line only), ``when`` it applies (see the module docstring); ``cli=False`` keeps it
    off the command line."""
    meta = {"help": help, "key": key, "choices": tuple(choices) if choices else None, "cli": cli, "when": when}
    return dataclasses.field(default=default, metadata=meta)


def nested(cls, title: str = ""):
    """A field holding another settings object; its options form a group titled ``title``."""
    meta = {"nested": True, "title": title}
    if all(f.default is not REQUIRED or f.default_factory is not REQUIRED for f in dataclasses.fields(cls)):
        return dataclasses.field(default_factory=cls, metadata=meta)
    return dataclasses.field(metadata=meta)


def flag(name: str) -> str:
    """The command-line option of field ``name``."""
    return "--" + name.replace("_", "-")


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _scalar(tp):
    """(tuple?, element type) of a field type: ``int | None`` -> int, ``tuple[float, ...]`` -> float."""
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is tuple:
        return True, typing.get_args(tp)[0]
    return False, tp


def _lookup(config: dict, path: str):
    node = config
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return REQUIRED
        node = node[part]
    return node


def _coerce(value, tp):
    is_list, elem = _scalar(tp)
    if is_list:
        return tuple(elem(v) for v in value)
    return value if value is None or elem not in (int, float, str) else elem(value)


def _applies(f, values) -> bool:
    """Whether field ``f`` applies given the other fields' ``values`` (a mapping or a settings object)."""
    if not f.metadata.get("when"):
        return True
    name, value = f.metadata["when"]
    return (values.get(name) if isinstance(values, dict) else getattr(values, name)) == value


def config_values(cls, config: dict, *, given: dict | None = None, **where) -> dict:
    """Field values of ``cls`` found in ``config`` (keys formatted with ``where``), nested objects built;
    ``given`` values (worked out from the config by the caller) are taken as they are."""
    hints, values = _hints(cls), dict(given or {})
    fields = sorted(dataclasses.fields(cls), key=lambda f: bool(f.metadata.get("when")))  # conditions first
    for f in fields:
        if f.name in values:
            continue
        if f.metadata.get("nested"):
            values[f.name] = from_config(hints[f.name], config, **where)
        elif f.metadata.get("key") and _applies(f, values):
            value = _lookup(config, f.metadata["key"].format(**where))
            if value is not REQUIRED:
                values[f.name] = _coerce(value, hints[f.name])
    return values


def from_config(cls, config: dict, **where):
    """Settings object ``cls`` from the validated config; ``where`` fills the keys' {placeholders}."""
    build = getattr(cls, "from_config", None)
    return build(config, **where) if build else cls(**config_values(cls, config, **where))


def to_argv(settings, *, every: bool = False) -> list[str]:
    """The config-read fields of ``settings`` as command-line options (see the module docstring); with ``every``,
    each command-line field, so that parsing the options gives ``settings`` back (a switch only when on, a list
    only when not empty, a field without a value left out)."""
    argv = []
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.metadata.get("nested"):
            argv += to_argv(value, every=every)
        elif not f.metadata.get("cli", True):
            continue
        elif every:
            argv += _rendered(f.name, value)
        elif not f.metadata.get("key") or not _applies(f, settings):
            continue
        elif isinstance(value, bool):
            argv += [flag(f.name)] if value else []
        elif value in (None, "", ()) and value == f.default:
            continue
        elif isinstance(value, tuple) and not isinstance(value, TextValue):
            argv += [flag(f.name), ",".join(str(v) for v in value)]
        else:
            argv += [flag(f.name), str(value)]
    return argv


def _rendered(name: str, value) -> list[str]:
    if isinstance(value, bool):
        return [flag(name)] if value else []
    if value is None or (isinstance(value, TextValue) and not str(value)):
        return []
    if isinstance(value, tuple) and not isinstance(value, TextValue):
        return [flag(name), ",".join(str(v) for v in value)] if value else [flag(name)]
    return [flag(name), str(value)]


def to_record(settings) -> dict:
    """``settings`` as plain data (paths as text, tuples as lists), to store beside a result: :func:`from_record`
    gives the object back."""
    record = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.metadata.get("nested"):
            value = to_record(value)
        elif isinstance(value, tuple) and not isinstance(value, TextValue):
            value = [str(v) if isinstance(v, TextValue) else v for v in value]
        elif value is not None and not isinstance(value, (bool, int, float, str)):
            value = str(value)
        record[f.name] = value
    return record


def from_record(cls, record: dict):
    """Settings object ``cls`` from :func:`to_record`'s plain data; a field the record lacks keeps its default."""
    hints, values = _hints(cls), {}
    for f in dataclasses.fields(cls):
        if f.name not in record:
            continue
        value = record[f.name]
        if f.metadata.get("nested"):
            values[f.name] = from_record(hints[f.name], value)
        else:
            values[f.name] = _typed(value, hints[f.name])
    return cls(**values)


def _typed(value, tp):
    is_list, elem = _scalar(tp)
    if value is None:
        return None
    if is_list:
        return tuple(elem(v) for v in value)
    return value if isinstance(value, elem) else elem(value)


def command_line(words) -> str:
    """``words`` (a command, or options) as one shell-quoted string."""
    return " ".join(shlex.quote(str(w)) for w in words)
