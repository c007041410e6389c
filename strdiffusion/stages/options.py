"""Command-line options from settings dataclasses (:mod:`strdiffusion.settings.fields`).

- :func:`add_arguments`: one command-line option per field, ``--<name with dashes>``; booleans are
  switches (default off), tuples comma-separated lists (no value: empty), a field without a default a
  required option. A field made with :func:`~strdiffusion.settings.fields.nested` (another settings object)
  adds that object's options in a group.
- :func:`from_parsed`: the object back from the parsed options (an argparse result).

:func:`add_arguments` takes the parser it fills, and a bad list value raises ValueError, which
argparse reports as an invalid value of that option.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re

from strdiffusion.runtime.environment import WORKFLOW_JOB
from strdiffusion.settings.fields import REQUIRED, _hints, _scalar, flag


def _list_parser(elem):
    def parse(text: str) -> tuple:
        return tuple(elem(v) for v in str(text).split(",") if v.strip())

    parse.__name__ = f"comma-separated {elem.__name__} list"
    return parse


def add_arguments(parser, cls, title: str | None = None) -> None:
    """Add the options of settings class ``cls`` to ``parser`` (in a group when ``title`` is given)."""
    group = parser.add_argument_group(title) if title else parser
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("nested"):
            add_arguments(parser, hints[f.name], f.metadata.get("title") or f.name)
            continue
        if not f.metadata.get("cli", True):
            continue
        is_list, elem = _scalar(hints[f.name])
        kw = {"dest": f.name, "help": f.metadata.get("help", "").replace("%", "%%")}
        if elem is bool:
            assert f.default is False, f"{cls.__name__}.{f.name}: a switch is off by default"
            kw["action"] = "store_true"
        else:
            kw["type"] = _list_parser(elem) if is_list else elem
            if is_list:  # a list option without a value is the empty list
                kw.update(nargs="?", const=())
            if f.metadata.get("choices"):
                kw["choices"] = f.metadata["choices"]
            if f.default is REQUIRED:
                kw["required"] = True
            else:
                kw["default"] = f.default
                if f.default not in (None, "", ()):
                    shown = ",".join(map(str, f.default)) if is_list else f.default
                    kw["help"] = f"{kw['help']} (default {shown})".lstrip()
        group.add_argument(flag(f.name), **kw)


def from_parsed(cls, parsed):
    """Settings object ``cls`` from parsed options (the attributes named after its fields)."""
    hints, values = _hints(cls), {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("nested"):
            values[f.name] = from_parsed(hints[f.name], parsed)
        elif f.metadata.get("cli", True):
            values[f.name] = getattr(parsed, f.name)
    return cls(**values)


def _leaf_fields(cls):
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("nested"):
            yield from _leaf_fields(hints[f.name])
        else:
            yield f


@functools.cache
def config_keys(stage: str = "") -> dict[str, str]:
    """Each command-line option of ``stage`` (all stages: "") read from the config, and its config key
    (``<dataset>`` for the data set)."""
    from strdiffusion.settings.jobs import JOBS

    classes = [cls for name, group in JOBS.items() if not stage or name.split()[0] == stage for cls in group]
    keys: dict[str, set[str]] = {}
    for cls in classes:
        for f in _leaf_fields(cls):
            if f.metadata.get("key"):
                key = re.sub(r"\{(\w+)\}", r"<\1>", f.metadata["key"])
                keys.setdefault(flag(f.name), set()).add(key)
    return {name: " or ".join(sorted(found)) for name, found in keys.items()}


def in_user_terms(message: str, stage: str = "", environ=os.environ) -> str:
    """A user error as the user gave the value: in a workflow job, whose options the workflow rendered from the
    config, each option of ``stage`` read from the config is named by its config key (the option follows in
    brackets)."""
    if not environ.get(WORKFLOW_JOB):
        return message
    keys = config_keys(stage)
    return re.sub(r"(?<![\w-])--[a-z][a-z0-9-]*", lambda m: f"config key '{keys[m[0]]}' ({m[0]})" if m[0] in keys
                  else m[0], message)
