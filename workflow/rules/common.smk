# Config validation, wildcard constraints and input functions shared by the rule files. A job's
# options come from its stage's settings object (strdiffusion/settings.py), built from the config.
import importlib.util
import math
import os
import shutil
import sys


def _environment_check():
    """Jobs run the library with the Python that runs Snakemake: it must have the environment."""
    missing = [m for m in ("strdiffusion", "torch", "cv2", "numpy", "pandas") if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"error: {sys.executable} (the Python running Snakemake) cannot import {', '.join(missing)}; "
                 "activate the environment first (`. .venv/bin/activate` or `conda activate strdiffusion`) "
                 "or run the environment's own snakemake (`.venv/bin/snakemake --cores all`)")


_environment_check()

from strdiffusion.config import validate, with_extends
from strdiffusion.methods import NETWORKS, base_method, curve_inputs, needed_networks, row_models, train_iterations
from strdiffusion.options import command_line, from_config
from strdiffusion.settings import ShardSettings, job_options
from strdiffusion.utils import UserError, bin_label


def _job_python_first_on_path():
    """Rules run `python -m strdiffusion ...`: make that `python` the interpreter running Snakemake (it
    imports strdiffusion, checked above). Jobs inherit os.environ, changed in memory only (parsing writes
    nothing). Under --sdm conda the job's environment wins and finds the package here through PYTHONPATH."""
    here = os.path.dirname(sys.executable)
    candidate = os.path.join(here, "python")
    env = os.environ  # PATH is not a setting of the workflow (no envvars: directive; the lint asks for one)
    if os.path.exists(candidate) and os.path.samefile(candidate, sys.executable):
        env.update(PATH=here + os.pathsep + env.get("PATH", os.defpath))
    else:  # e.g. /usr/bin/python3.11 without /usr/bin/python: then `python` on PATH must be this interpreter
        found = shutil.which("python")
        if not (found and os.path.samefile(found, sys.executable)):
            sys.exit(f"error: rules run `python`, but {sys.executable} (the Python running Snakemake) has no `python` "
                     f"beside it and PATH gives {found or 'none'}; run the snakemake of a virtual or conda "
                     "environment (`.venv/bin/snakemake --cores all`)")
    root = workflow.basedir  # the clone: strdiffusion/ beside the Snakefile
    if os.path.isdir(os.path.join(root, "strdiffusion")):
        env.update(PYTHONPATH=os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p))


_job_python_first_on_path()

_given = list(workflow.overwrite_configfiles)  # a file may extend others (config/paper/psv.yaml: common.yaml)
_files = [*([] if workflow.config_settings.replace_workflow_config else workflow.configfiles[len(_given):]), *_given]
try:
    resolved = validate(with_extends(config, _files, workflow.config_settings.config))
    config.clear()
    config.update(resolved)
except UserError as exc:
    sys.exit(f"error: {exc}")


wildcard_constraints:
    dataset=r"[A-Za-z0-9_]+",
    split=r"train|test",
    method=r"[a-z_]+",
    bin=r"\d+-\d+",
    shard=r"\d+",


def options(stage, **fixed):
    """A params function: the options of a `strdiffusion <stage>` job, rendered and shell-quoted by the library
    from the stage's settings built from the config, the job's wildcards and ``fixed`` (a train rule's network)."""

    def job(wildcards):
        return job_options(stage, config, **dict(wildcards.items()), **fixed)

    return job


def bins(dataset):
    return [bin_label(lo, hi) for lo, hi in config["datasets"][dataset]["masks"]["bins"]]


def n_shards(dataset):
    return math.ceil(config["datasets"][dataset]["n_test"] / from_config(ShardSettings, config).shard_size)


def method_models(wildcards):
    return row_models(config, wildcards.dataset, wildcards.method)


def shard_dirs(wildcards):
    shards = range(n_shards(wildcards.dataset))
    return expand("results/{dataset}/inpaint/{method}/{bin}/shard_{shard}", **wildcards, shard=shards)


def table_inputs(wildcards):
    ds = wildcards.dataset
    metrics = "results/{dataset}/metrics/{method}/{bin}/{name}.csv"
    return {key: expand(metrics, dataset=ds, method=config["methods"], bin=bins(ds), name=name)
            for key, name in (("per_image", "per_image"), ("sets", "set"))}


def run_datasets():
    return config["run_datasets"] or list(config["datasets"])


def figure_inputs(wildcards):
    shards = "results/{dataset}/inpaint/{method}/{bin}/shard_0"
    return {"per_image": table_inputs(wildcards)["per_image"],
            "shards": expand(shards, dataset=wildcards.dataset, method=config["methods"], bin=bins(wildcards.dataset))}


def all_targets():
    tables = expand("results/tables/{dataset}.{ext}", dataset=run_datasets(), ext=["md", "tex", "csv"])
    figure = "results/figures/{dataset}/{name}.{ext}"
    figures = expand(figure, dataset=run_datasets(), name=["qualitative", "metrics_vs_hole_ratio"], ext=["png", "pdf"])
    curves = expand(figure, dataset=run_datasets(), name="learning_curves", ext=["png", "pdf"]) if needed_networks(config) else []
    return tables + figures + weights_status(None) + curves


def curve_sources(wildcards):
    return curve_inputs(config, wildcards.dataset)


def curve_options(wildcards, input):
    return command_line(["--inputs", *(f"{key.removesuffix('_given')}={path}" for key, path in input.items())])


def checkpoint_options(wildcards):
    """The inpaint job's `--<net>-checkpoint FILE` of each network its method samples with."""
    return command_line([arg for net, path in method_models(wildcards).items() for arg in (f"--{net}-checkpoint", path)])


def weights_status(wildcards):
    """Metric jobs wait for the weights fetch (metrics.fetch_weights: true); it never fails offline."""
    return ["results/weights.json"] if config["metrics"]["fetch_weights"] else []


def weights_present(kind):
    """'present' or 'missing' at parse time: a params value, so metric jobs re-run once the weights arrive."""
    from strdiffusion.weights import target_path_no_torch

    name = {"per_image": "alexnet", "per_set": "inception"}[kind]
    return "present" if target_path_no_torch(name, config["metrics"][f"{name}_weights"]).is_file() else "missing"


def train_nproc(wildcards, resources):
    """Processes of one training job: one per GPU asked for (resources.gpu, set by profiles), at least 1."""
    return max(1, int(getattr(resources, "gpu", 0) or 0))
