"""Configuration loading and validation against the schema shipped in the package,
``strdiffusion/settings/schemas/config.schema.yaml`` (read with importlib.resources, so a plain ``pip install .``
validates too; ``workflow/schemas/config.schema.yaml`` is a link to it for Snakemake's layout).

Errors are one line and name the offending key, e.g.
``config key 'datasets.builtin.n_tset': unknown key (allowed: source, path, ...)``.

A config file may start from others: ``extends: common.yaml`` (a path, or a list of paths, relative
to the file) merges those first and the file over them (:func:`read_layer`), so the paper configs
share ``config/paper/common.yaml`` and each still works alone as ``--configfile config/paper/psv.yaml``.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

from strdiffusion.io.errors import UserError
from strdiffusion.settings.external import check_config as check_external

SCHEMA_RESOURCE = ("schemas", "config.schema.yaml")   # inside the strdiffusion package
SCHEMA_NAME = "strdiffusion/settings/schemas/config.schema.yaml"


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


def _resolve(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        target = root
        for part in schema["$ref"].split("/")[1:]:
            target = target[part]
        schema = target
    return schema


def _typed(value: str, schema: dict):
    """A string where the schema wants a number, integer or boolean, read as an overlay file's value is."""
    kinds = schema.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if not kinds or "string" in kinds:
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if isinstance(parsed, str) and "number" in kinds:  # 1e-4: a float, though YAML 1.1 reads it as a string
        try:
            return float(value)
        except ValueError:
            return value
    return parsed


def _coerce(instance, schema: dict, root: dict):
    schema = _resolve(schema, root)
    if isinstance(instance, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        return {k: _coerce(v, props[k] if k in props else extra if isinstance(extra, dict) else {}, root)
                for k, v in instance.items()}
    if isinstance(instance, list):
        items = schema.get("items", {})
        return [_coerce(v, items if isinstance(items, dict) else {}, root) for v in instance]
    return _typed(instance, schema) if isinstance(instance, str) else instance


def coerce_overrides(overrides: dict) -> dict:
    """``--config`` values typed as an overlay file's: Snakemake reads a nested value (``datasets={"mine":
    {"test_fraction": 0.2}}``) with YAML's base loader, every scalar a string; each string where the schema
    wants a number, integer or boolean is read as YAML (a string key stays a string)."""
    schema = _schema()
    return _coerce(copy.deepcopy(dict(overrides or {})), schema, schema)


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
    (--config), typed here as in a file (:func:`coerce_overrides`)."""
    overrides = coerce_overrides(overrides)
    return layered(files, overrides) if EXTENDS in config else merge(copy.deepcopy(dict(config)), overrides)


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


# ------------------------------------------------------------------ inputs and profile, checked before any job runs

def _dataset_inputs(name: str, ds: dict, root: Path):
    """(config key, path, what it is) of each outside file or folder data set ``name`` still needs: its images
    until ``results/<name>/data`` holds them, its mask sources until the masks are written."""
    key = f"datasets.{name}"
    results = root / "results" / name
    if ds["source"] == "folder" and not (results / "data" / "manifest.csv").is_file():
        for field in ("path", "test_path", "train_list", "test_list"):
            if ds.get(field):
                yield f"{key}.{field}", ds[field], "file" if field.endswith("_list") else "folder"
    m = ds["masks"]
    test_done, pool_done = (results / "masks" / "test").is_dir(), (results / "masks" / "pool").is_dir()
    if m["protocol"] == "folder" and not test_done:
        yield f"{key}.masks.source", m["source"], "folder or .zip"
    if m.get("train_source") and not pool_done:
        yield f"{key}.masks.train_source", m["train_source"], "folder or .zip"
    if (m["protocol"] == "nvidia" and not test_done) or (m.get("train_protocol") == "nvidia" and not pool_done):
        if m.get("nvidia_source"):
            yield f"{key}.masks.nvidia_source", m["nvidia_source"], "folder or .zip"


def missing_inputs(config: dict, root=".", networks: bool = True) -> list[str]:
    """One line for each data folder, file list, mask source and given checkpoint of the validated ``config``
    that does not exist (relative paths from ``root``, the folder the workflow runs in): all of them at once,
    so a run never starts only to stop at its first missing input. ``networks`` False: the run makes only
    outputs that come before any network (:func:`needs_networks`), so the given checkpoints are not looked for."""
    from strdiffusion.settings.methods import given_checkpoints

    root = Path(root)
    lines = []

    def where(value: str) -> str:  # a relative path: where it was looked for
        return "" if Path(value).is_absolute() else f" in {root.resolve()}"

    for name in config.get("run_datasets") or list(config["datasets"]):
        for key, value, kind in _dataset_inputs(name, config["datasets"][name], root):
            if not (root / value).exists():
                lines.append(f"config key '{key}': {kind} {value} not found{where(value)}; put it there or set "
                             "the key to your copy in an overlay")
    for net, value in given_checkpoints(config).items() if networks else ():
        if not (root / value).is_file():
            lines.append(f"config key 'checkpoints.{net}': checkpoint {value} not found{where(value)}; put the "
                         "file there, or set the key to your copy (\"\" trains the network)")
    return lines


PLACEHOLDER = "CHANGE_ME_"
_PLACEHOLDER_FIX = {"cpu_partition": "your CPU partition (`sinfo -s` lists them)",
                    "gpu_partition": "your GPU partition (`sinfo -s` lists them)",
                    "account": "your account (`sacctmgr -n show assoc user=$USER format=account`), or with \"\" "
                               "on a cluster without accounting"}


def _profile_name(options: list[str], environ) -> str:
    """The --profile a driver was given (its config.yaml), for the placeholder lines."""
    name = environ.get("SNAKEMAKE_PROFILE", "")
    for i, arg in enumerate(options):
        if arg == "--profile" and i + 1 < len(options):
            name = options[i + 1]
        elif arg.startswith("--profile="):
            name = arg.partition("=")[2]
    if not name:
        return "the profile"
    return str(Path(name) / "config.yaml") if Path(name).is_dir() else name


def _as_written(resources) -> dict:  # a profile's values as written (Snakemake keeps them beside their parsed form)
    return {name: getattr(value, "raw", value) for name, value in (resources or {}).items()}


# Snakemake's modes that plan and run no job: they work without the inputs (--unlock after a crash, above all)
NO_JOBS = {"--lint", "--unlock", "--list-rules", "--list", "-l", "--list-target-rules", "--lt", "--cleanup-metadata",
           "--cm", "--summary", "-S", "--detailed-summary", "-D", "--delete-all-output", "--delete-temp-output",
           "--rulegraph", "--containerize", "--list-changes", "--lc", "--list-untracked", "--lu", "--archive",
           "--report", "--cleanup-shadow", "--conda-create-envs-only", "--print-compilation"}


# what a run may ask for without using a network: the data, structure maps and masks, their export for outside
# methods, the metric weights and the plan (outputs, and the rules making them)
_BEFORE_NETWORKS = re.compile(r"results/(?:[A-Za-z0-9_]+/(?:data|structure|masks|export)(?:/.*)?|weights\.json|plan\.csv)")
_RULES_BEFORE_NETWORKS = {"prepare_data", "extract_structure", "train_masks", "test_masks", "pair_masks", "export",
                          "export_pairs", "weights", "plan"}


def needs_networks(targets) -> bool:
    """Whether a run asking for ``targets`` (Snakemake's, none: the default target) uses a trained network."""
    targets = [str(t).removeprefix("./") for t in targets]
    return not targets or not all(t in _RULES_BEFORE_NETWORKS or _BEFORE_NETWORKS.fullmatch(t.rstrip("/"))
                                  for t in targets)


def _targets(driver_options: list[str]) -> list[str]:
    """The targets of a Snakemake command line, read by Snakemake's own parser (as the driver reads them)."""
    from snakemake.cli import get_argument_parser

    try:
        return list(get_argument_parser().parse_known_args(driver_options)[0].targets or [])
    except SystemExit:  # an option Snakemake itself refuses: it says so; here, check everything
        return []


def checked_before_jobs(config: dict, workflow, driver_options: list[str], environ=None) -> dict:
    """``config``, after checking what a run of Snakemake's ``workflow`` (started with ``driver_options``, the
    words after ``snakemake``) needs before its first job (a dry run too): every missing input
    (:func:`missing_inputs`) and every unfilled placeholder of the profile's resources
    (:func:`profile_placeholders`), all in one UserError of one line each. Only a driver checks: cluster jobs
    read the workflow again on their node, and modes that run no job (``--unlock``, ``--lint``) need no input."""
    import os

    if not workflow.is_main_process or NO_JOBS.intersection(a.partition("=")[0] for a in driver_options):
        return config
    rs = workflow.resource_settings
    per_rule = {name: _as_written(res) for name, res in (rs.overwrite_resources or {}).items()}
    profile = _profile_name(driver_options, os.environ if environ is None else environ)
    lines = (missing_inputs(config, networks=needs_networks(_targets(driver_options)))
             + profile_placeholders(_as_written(rs.default_resources), per_rule, profile))
    if lines:
        raise UserError("\nerror: ".join(lines))  # printed with a leading "error: ", as every line after it
    return config


def profile_placeholders(default_resources: dict, rule_resources: dict, profile: str = "the profile") -> list[str]:
    """One line for each unfilled ``CHANGE_ME_*`` value of a profile's ``default-resources`` ({resource: value})
    and ``set-resources`` ({rule: {resource: value}}); rules sharing a placeholder share its line."""
    lines = []
    for resource, value in default_resources.items():
        if isinstance(value, str) and PLACEHOLDER in value:
            lines.append((f"default-resources.{resource}", value))
    shared: dict = {}
    for rule, resources in rule_resources.items():
        for resource, value in resources.items():
            if isinstance(value, str) and PLACEHOLDER in value:
                shared.setdefault((resource, value), []).append(rule)
    for (resource, value), rules in shared.items():
        lines.append((f"set-resources.{{{','.join(rules)}}}.{resource}" if len(rules) > 1
                      else f"set-resources.{rules[0]}.{resource}", value))
    out = []
    for key, value in lines:
        placeholder = value[value.index(PLACEHOLDER):].strip("'\"")
        fix = _PLACEHOLDER_FIX.get(placeholder.removeprefix(PLACEHOLDER), "your value")
        out.append(f"{profile}: key '{key}' holds the placeholder {placeholder}; replace it with {fix}")
    return out
