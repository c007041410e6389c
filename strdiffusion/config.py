"""Configuration loading and validation against the schema shipped in the package,
``strdiffusion/schemas/config.schema.yaml`` (read with importlib.resources, so a plain ``pip install .``
validates too; ``workflow/schemas/config.schema.yaml`` is a link to it for Snakemake's layout).

Errors are one line and name the offending key, e.g.
``config key 'datasets.builtin.n_tset': unknown key (allowed: source, path, ...)``.

A config file may start from others: ``extends: common.yaml`` (a path, or a list of paths, relative
to the file) merges those first and the file over them (:func:`read_layer`), so the paper configs
share ``config/paper/common.yaml`` and each still works alone as ``--configfile config/paper/psv.yaml``.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

from .external_rows import check_config as check_external
from .utils import UserError

SCHEMA_RESOURCE = ("schemas", "config.schema.yaml")   # inside the strdiffusion package
SCHEMA_NAME = "strdiffusion/schemas/config.schema.yaml"


def schema_text() -> str:
    from importlib.resources import files

    resource = files(__package__).joinpath(*SCHEMA_RESOURCE)
    try:
        return resource.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{SCHEMA_NAME}: the config schema is missing from the installed package; "
                        "reinstall strdiffusion (pip install .)") from None


def _schema():
    return yaml.safe_load(schema_text())


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _fill_defaults(instance, schema, root):
    """Fill `default` values of object properties (recursively, following local $refs)."""
    if "$ref" in schema:
        ref = schema["$ref"].split("/")[1:]
        target = root
        for part in ref:
            target = target[part]
        schema = target
    if isinstance(instance, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in instance and isinstance(sub, dict) and "default" in sub:
                instance[name] = copy.deepcopy(sub["default"])
            if name in instance:
                _fill_defaults(instance[name], sub, root)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, value in instance.items():
                if name not in schema.get("properties", {}):
                    _fill_defaults(value, extra, root)


def validate(config: dict, source: str = "config") -> dict:
    """Validate ``config`` and return a copy with schema defaults filled in.

    Raises UserError naming the first offending key and what is wrong.
    """
    import jsonschema

    config = _with_datasets_alike(config, source)
    schema = _schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        err = errors[0]
        path = list(err.absolute_path)
        if err.validator == "additionalProperties":
            allowed = sorted(err.schema.get("properties", {}))
            extra = sorted(set(err.instance) - set(allowed)) if isinstance(err.instance, dict) else []
            key = _key(path + extra[:1])
            hint = f" (allowed here: {', '.join(allowed)})" if allowed else ""
            raise UserError(f"{source}: config key '{key}': unknown key{hint}; fix or remove it")
        if err.validator == "required":
            raise UserError(f"{source}: config key '{_key(path)}': {err.message}")
        raise UserError(f"{source}: config key '{_key(path)}': {err.message}; see {SCHEMA_NAME}")
    config = copy.deepcopy(config)
    _fill_defaults(config, schema, schema)
    _check_semantics(config, source)
    return config


def _with_datasets_alike(config: dict, source: str) -> dict:
    """A data set with ``like: <other>`` takes the other's settings, its own keys over them: the same images,
    masks and pairs under another name (and results folder)."""
    datasets = config.get("datasets")
    if not isinstance(datasets, dict) or not any(isinstance(d, dict) and "like" in d for d in datasets.values()):
        return config
    config = copy.deepcopy(config)
    for name, ds in config["datasets"].items():
        if not isinstance(ds, dict) or "like" not in ds:
            continue
        other = ds.pop("like")
        model = datasets.get(other)
        if not isinstance(model, dict) or "like" in model:
            raise UserError(f"{source}: config key 'datasets.{name}.like': '{other}' must name a data set defined "
                            f"without like (defined: {', '.join(datasets)})")
        config["datasets"][name] = merge(copy.deepcopy(model), ds)
    return config


def _check_semantics(config: dict, source: str) -> None:
    size, depth = config["image_size"], config["model"].get("depth", 4)
    if size % (2 ** (depth - 1)):
        raise UserError(f"{source}: config key 'image_size': {size} is not divisible by 2**(model.depth-1) = "
                        f"{2 ** (depth - 1)}; choose another size or depth")
    for name, ds in config["datasets"].items():
        if ds["source"] == "folder" and not ds.get("path"):
            raise UserError(f"{source}: config key 'datasets.{name}.path' is required for source: folder")
        for i, (lo, hi) in enumerate(ds["masks"]["bins"]):
            if not lo < hi:
                raise UserError(f"{source}: config key 'datasets.{name}.masks.bins[{i}]': [{lo}, {hi}] must have lo < hi")
        m = ds["masks"]
        if m["protocol"] == "folder" and not m.get("source"):
            raise UserError(f"{source}: config key 'datasets.{name}.masks.source' must point at a folder or .zip "
                            "of mask files when protocol is folder")
        if m["protocol"] == "folder" and m.get("binning") == "none" and len(m["bins"]) != 1:
            raise UserError(f"{source}: config key 'datasets.{name}.masks.bins': binning none puts every mask in "
                            "one bin; give a single bin, e.g. [[0.0, 1.0]]")
        if m.get("train_protocol") == "folder" and not m.get("train_source"):
            raise UserError(f"{source}: config key 'datasets.{name}.masks.train_source' must point at a folder or "
                            ".zip of training masks when train_protocol is folder")
        if ds["masks"]["protocol"] == "nvidia" and not ds["masks"].get("nvidia_source"):
            raise UserError(f"{source}: config key 'datasets.{name}.masks.nvidia_source' must point at the NVIDIA "
                            "irregular mask test set (folder or .zip) when protocol is nvidia")
    for name in config.get("run_datasets", []):
        if name not in config["datasets"]:
            raise UserError(f"{source}: config key 'run_datasets': '{name}' is not defined under datasets "
                            f"(defined: {', '.join(config['datasets'])})")
    check_external(config, source)
    rows = list(config["methods"]) + list(config.get("external_methods") or {})
    ranked_by = (config.get("explorer") or {}).get("method", "")
    if ranked_by and ranked_by not in rows:
        raise UserError(f"{source}: config key 'explorer.method': '{ranked_by}' is not a row of this run "
                        f"({', '.join(rows)}); name one of them or leave it empty")
    smp = config["sampling"]
    if smp.get("u_min", 1) > smp.get("u_max", 1):
        raise UserError(f"{source}: config key 'sampling.u_min' ({smp['u_min']}) must not exceed sampling.u_max ({smp['u_max']})")


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config must be a mapping of keys to values")
    return data


EXTENDS = "extends"


def read_layer(path, _seen: tuple = ()) -> dict:
    """The config file ``path`` merged over the files its ``extends`` key names (relative to it, in order,
    each with its own ``extends``); the key itself is dropped."""
    path = Path(path)
    if path.resolve() in _seen:
        raise UserError(f"{path}: config key '{EXTENDS}' leads back to this file; remove the circle")
    data = _read_yaml(path)
    parents = data.pop(EXTENDS, [])
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise UserError(f"{path}: config key '{EXTENDS}' must be a file name or a list of them, e.g. common.yaml")
    merged: dict = {}
    for parent in parents:
        merge(merged, read_layer(path.parent / parent, _seen + (path.resolve(),)))
    return merge(merged, data)


def layered(files, overrides: dict | None = None) -> dict:
    """``files`` merged in order, each over what it extends, then ``overrides`` (``--config``): the config
    Snakemake builds from ``--configfile`` files, with ``extends`` resolved."""
    merged: dict = {}
    for path in files:
        merge(merged, read_layer(path))
    return merge(merged, copy.deepcopy(dict(overrides or {})))


def with_extends(config: dict, files, overrides: dict | None = None) -> dict:
    """Snakemake's ``config`` with the files its config files extend merged beneath them: Snakemake merges
    ``files`` (the workflow's own config file, then each --configfile) as they are, then ``overrides``
    (--config). Without an ``extends`` key, ``config`` itself."""
    return layered(files, overrides) if EXTENDS in config else config


def workflow_config(root, configfiles, named_by: str = "") -> dict:
    """The validated config a workflow run from ``root`` with ``--configfile configfiles`` gets: the workflow's
    ``config/config.yaml``, each file merged over it (each over what it extends), data sets ``like`` another
    resolved and defaults filled. A file that does not exist is a one-line error (``named_by`` says where its
    name came from)."""
    base = Path(root) / "config" / "config.yaml"
    files = [base]
    for f in configfiles:
        path = Path(f)
        if not path.is_file():
            raise UserError(f"{path}: config file not found" + (f" (named by {named_by})" if named_by else ""))
        if path.resolve() != base.resolve():
            files.append(path)
    return validate(layered(files), source=" + ".join(str(f) for f in configfiles) or str(base))


def load(path) -> dict:
    path = Path(path)
    return validate(read_layer(path), source=str(path))


def merge(base: dict, update: dict) -> dict:
    """Deep-merge ``update`` into ``base`` in place (Snakemake's --configfile semantics)."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base
