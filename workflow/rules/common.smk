# Config validation, wildcard constraints and input functions shared by the rule files. A job's
# options come from its stage's settings object (strdiffusion/settings/jobs.py), built from the config.
import importlib.util
import math
import sys


def _environment_check():
    """Jobs run the library with the Python that runs Snakemake: it must have the environment."""
    missing = [m for m in ("strdiffusion", "torch", "cv2", "numpy", "pandas") if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"error: {sys.executable} (the Python running Snakemake) cannot import {', '.join(missing)}; "
                 "activate the environment first (`. .venv/bin/activate` or `conda activate strdiffusion`) "
                 "or run the environment's own snakemake (`.venv/bin/snakemake --cores all`)")


_environment_check()

from strdiffusion.io.errors import UserError
from strdiffusion.runtime.environment import failed_job_errors, python_first_on_path
from strdiffusion.runtime.gpu import workflow_slots
from strdiffusion.settings.config import checked_before_jobs, validate, with_extends
from strdiffusion.settings.external import import_inputs, prediction_dirs, row_methods
from strdiffusion.settings.fields import command_line, from_config
from strdiffusion.settings.jobs import ShardSettings, job_options
from strdiffusion.settings.methods import (NETWORKS, base_method, curve_inputs, needed_networks, row_models,
                                           train_iterations)
from strdiffusion.settings.values import bin_label

_error = python_first_on_path(workflow.basedir)  # PATH and PYTHONPATH not settings of the workflow (no envvars:)
if _error:
    sys.exit(_error)

_given = list(workflow.overwrite_configfiles)  # a file may extend others (config/paper/psv.yaml: common.yaml)
_files = [*([] if workflow.config_settings.replace_workflow_config else workflow.configfiles[len(_given):]), *_given]
try:
    resolved = checked_before_jobs(validate(with_extends(config, _files, workflow.config_settings.config)), workflow,
                                   sys.argv[1:])
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
    """Folders of a row's outputs of one bin: its inpaint shards, or an outside method's imported outputs."""
    return prediction_dirs(config, wildcards.dataset, wildcards.method, [wildcards.bin], range(n_shards(wildcards.dataset)))


def table_inputs(wildcards):
    ds = wildcards.dataset
    metrics = "results/{dataset}/metrics/{method}/{bin}/{name}.csv"
    return {key: expand(metrics, dataset=ds, method=row_methods(config), bin=bins(ds), name=name)
            for key, name in (("per_image", "per_image"), ("sets", "set"))}


def run_datasets():  # the data sets of this run (all by default)
    return config["run_datasets"] or list(config["datasets"])


def figure_inputs(wildcards):
    ds = wildcards.dataset
    return {"per_image": table_inputs(wildcards)["per_image"],
            "shards": [d for m in row_methods(config) for d in prediction_dirs(config, ds, m, bins(ds), [0])]}


def all_targets():
    tables = expand("results/tables/{dataset}.{ext}", dataset=run_datasets(), ext=["md", "tex", "csv"])
    figure = "results/figures/{dataset}/{name}.{ext}"
    figures = expand(figure, dataset=run_datasets(), name=["qualitative", "metrics_vs_hole_ratio"], ext=["png", "pdf"])
    curves = expand(figure, dataset=run_datasets(), name="learning_curves", ext=["png", "pdf"]) if needed_networks(config) else []
    return tables + figures + weights_status(None) + curves + expand("results/{dataset}/explorer/index.html", dataset=run_datasets())


def import_sources(wildcards):
    return import_inputs(config, wildcards.dataset, wildcards.method, wildcards.bin)


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


def reference_stats(wildcards):  # a set job's ground-truth statistics (reference_stats rule), with FID or KID
    return expand("results/{dataset}/metrics/reference/{bin}.npz", **wildcards) if config["metrics"]["per_set"] else []


def reference_option(wildcards, input):
    return command_line(["--reference", *input.reference][: 2 * bool(input.reference)])


def weights_present(kind):
    """'present' or 'missing' at parse time: a params value, so metric jobs re-run once the weights arrive."""
    from strdiffusion.metrics.weights import target_path

    name = {"per_image": "alexnet", "per_set": "inception"}[kind]
    return "present" if target_path(name, config["metrics"][f"{name}_weights"]).is_file() else "missing"


GPU_JOB, inpaint_gpus = workflow_slots(workflow)  # the GPU rules' resources.gpu (docs/gpu.md)


def train_nproc(wildcards, resources):
    """Processes of one training job: one per GPU asked for (resources.gpu, set by profiles), at least 1."""
    return max(1, int(getattr(resources, "gpu", 0) or 0))


def plan_configfiles(wildcards):  # the run's config files (the default first): the plan merges them alike
    return command_line(["--configfile", *map(str, workflow.configfiles)])
