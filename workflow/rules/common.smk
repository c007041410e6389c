# Config validation, wildcard constraints and input functions shared by the rule files.
import importlib.util
import math
import os
import shlex
import sys


def _environment_check():
    """Jobs run the library with the Python that runs Snakemake: it must have the environment."""
    missing = [m for m in ("strdiffusion", "torch", "cv2", "numpy", "pandas") if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"error: {sys.executable} (the Python running Snakemake) cannot import {', '.join(missing)}; "
                 "activate the environment first (`. .venv/bin/activate` or `conda activate strdiffusion`) "
                 "or run the environment's own snakemake (`.venv/bin/snakemake --cores all`)")


_environment_check()

from strdiffusion.config import validate
from strdiffusion.utils import UserError, bin_label


def _job_python_first_on_path():
    """Rules run `python -m strdiffusion ...`: make that `python` the interpreter running Snakemake (it
    imports strdiffusion, checked above), not whatever comes first on PATH. Jobs inherit os.environ.
    With --sdm conda the job's own environment is activated after this and wins, as it should."""
    here = os.path.dirname(sys.executable)
    candidate = os.path.join(here, "python")
    if not (os.path.exists(candidate) and os.path.samefile(candidate, sys.executable)):
        import tempfile

        here = tempfile.mkdtemp(prefix="strdiffusion-python-")  # e.g. /usr/bin/python3.11 without /usr/bin/python
        os.symlink(sys.executable, os.path.join(here, "python"))
    env = os.environ  # PATH is not a setting of the workflow (no envvars: directive; the lint asks for one)
    env.update(PATH=here + os.pathsep + env.get("PATH", os.defpath))


_job_python_first_on_path()

try:
    config.update(validate(config))
except UserError as exc:
    sys.exit(f"error: {exc}")


wildcard_constraints:
    dataset=r"[A-Za-z0-9_]+",
    split=r"train|test",
    method=r"[a-z_]+",
    bin=r"\d+-\d+",
    shard=r"\d+",


# the methods and the networks each diffusion method samples with: one list, in the library
from strdiffusion.methods import CLASSICAL, DIFFUSION as METHOD_NETS


def dataset_cfg(wildcards):
    return config["datasets"][wildcards.dataset]


def bins(dataset):
    return [bin_label(lo, hi) for lo, hi in config["datasets"][dataset]["masks"]["bins"]]


def bins_arg(dataset):
    return ",".join(f"{lo}:{hi}" for lo, hi in config["datasets"][dataset]["masks"]["bins"])


def n_shards(dataset):
    return math.ceil(config["datasets"][dataset]["n_test"] / config["sampling"]["shard_size"])


def model_path(dataset, net):
    given = config["checkpoints"].get(net, "")
    return given if given else f"results/{dataset}/models/{net}.pt"


def method_models(wildcards):
    return {net: model_path(wildcards.dataset, net) for net in METHOD_NETS.get(wildcards.method, [])}


def shard_dirs(wildcards):
    return expand(
        "results/{dataset}/inpaint/{method}/{bin}/shard_{shard}",
        dataset=wildcards.dataset,
        method=wildcards.method,
        bin=wildcards.bin,
        shard=range(n_shards(wildcards.dataset)),
    )


def table_inputs(wildcards):
    ds = wildcards.dataset
    return {
        "per_image": expand(
            "results/{dataset}/metrics/{method}/{bin}/per_image.csv",
            dataset=ds,
            method=config["methods"],
            bin=bins(ds),
        ),
        "sets": expand(
            "results/{dataset}/metrics/{method}/{bin}/set.csv",
            dataset=ds,
            method=config["methods"],
            bin=bins(ds),
        ),
    }


def run_datasets():
    return config["run_datasets"] or list(config["datasets"])


def figure_inputs(wildcards):
    ds = wildcards.dataset
    return {
        "per_image": table_inputs(wildcards)["per_image"],
        "shards": expand(
            "results/{dataset}/inpaint/{method}/{bin}/shard_0", dataset=ds, method=config["methods"], bin=bins(ds)
        ),
    }


def figure_args(wildcards):
    ds = wildcards.dataset
    return f"--methods {','.join(config['methods'])} --bins {','.join(bins(ds))}"


def all_targets():
    tables = expand("results/tables/{dataset}.{ext}", dataset=run_datasets(), ext=["md", "tex", "csv"])
    figures = expand(
        "results/figures/{dataset}/{name}.{ext}",
        dataset=run_datasets(),
        name=["qualitative", "metrics_vs_hole_ratio"],
        ext=["png", "pdf"],
    )
    weights = ["results/weights.json"] if config["metrics"]["fetch_weights"] else []
    curves = [] if not trained_nets() else expand(
        "results/figures/{dataset}/learning_curves.{ext}", dataset=run_datasets(), ext=["png", "pdf"]
    )
    return tables + figures + weights + curves


def trained_nets():
    """Networks the configured methods sample with, in a fixed order."""
    needed = {net for method in config["methods"] for net in METHOD_NETS.get(method, [])}
    return [net for net in ("structure", "texture", "critic", "irsde") if net in needed]


def curve_sources(wildcards):
    """Per network: its learning-curve CSV when trained here, else the given checkpoint (curve in its metadata)."""
    ds = wildcards.dataset
    return {
        net: (config["checkpoints"][net] or f"results/{ds}/curves/{net}.csv") for net in trained_nets()
    }


def curve_args(wildcards):
    return "--inputs " + " ".join(f"{net}={path}" for net, path in curve_sources(wildcards).items())


def data_args(wildcards):
    """Command-line options of the data stage for one data set (from config)."""
    ds = dataset_cfg(wildcards)
    args = ["--source", ds["source"], "--size", config["image_size"], "--seed", config["seed"]]
    if ds["source"] == "folder":
        if ds["test_path"]:
            args += ["--test-path", ds["test_path"]]
        args += ["--path", ds["path"], "--test-fraction", ds["test_fraction"], "--resize", ds["resize"]]
        args += ["--max-train", ds["max_train"]]
        for key in ("train_list", "test_list"):
            if ds.get(key):
                args += [f"--{key.replace('_', '-')}", ds[key]]
        if ds["skip_bad_files"]:
            args.append("--skip-bad-files")
    return " ".join(f"'{a}'" if " " in str(a) else str(a) for a in args)


def structure_sigma(wildcards):
    return config["structure"][f"sigma_{wildcards.split}"]


def mask_args(wildcards):
    """Options of `masks generate` for the test masks of one data set."""
    m = dataset_cfg(wildcards)["masks"]
    args = [
        "--protocol", m["protocol"], "--size", config["image_size"], "--bins", bins_arg(wildcards.dataset),
        "--count", m["per_bin"], "--seed", config["seed"],
    ]
    if m["protocol"] == "nvidia":
        args += ["--nvidia-source", m["nvidia_source"], "--nvidia-binning", m["nvidia_binning"]]
        args += ["--nvidia-border", m["nvidia_border"]]
    if m["protocol"] == "folder":
        args += ["--source", m["source"], "--polarity", m["polarity"], "--binning", m["binning"]]
        args += ["--files-per-bin", m["files_per_bin"], "--threshold", m["threshold"], "--resize", m["resize"]]
        args += ["--n-test", dataset_cfg(wildcards)["n_test"]]
    return " ".join(shlex.quote(str(a)) for a in args)


def pool_args(wildcards):
    m = dataset_cfg(wildcards)["masks"]
    protocol = "folder" if m["train_source"] else m["train_protocol"]
    args = ["--protocol", protocol, "--size", config["image_size"], "--count", m["train_pool"]]
    args += ["--seed", config["seed"]]
    if protocol == "nvidia":
        args += ["--nvidia-source", m["nvidia_source"]]
    if protocol == "folder":
        args += ["--source", m["train_source"], "--polarity", m["train_polarity"], "--threshold", m["threshold"]]
        args += ["--resize", m["resize"]]
    return " ".join(shlex.quote(str(a)) for a in args)


def pairs_args(wildcards):
    return f"--bins {bins_arg(wildcards.dataset)} --n-test {dataset_cfg(wildcards)['n_test']} --seed {config['seed']}"


def sampling_args(wildcards):
    """Sampler options of the inpaint stage (diffusion methods only)."""
    if wildcards.method in CLASSICAL:
        return ""
    s = config["sampling"]
    args = [f"--seed {config['seed']}", f"--batch-size {s['batch_size']}"]
    args += [f"--{k.replace('_', '-')} {s[k]}" for k in ("u_max", "u_min", "jump", "re", "switch", "accept", "late_guidance", "hole_fill")]
    args += [f"--T {config['sde']['T']}"]
    args += [f"--{k.replace('_', '-')}" for k in ("channels_last", "compile", "tf32") if s.get(k)]
    if s.get("autocast", "none") != "none":
        args.append(f"--autocast {s['autocast']}")
    args += [f"--{net}-checkpoint {path}" for net, path in method_models(wildcards).items()]
    return " ".join(args)


def metric_list(kind):
    return ",".join(config["metrics"][kind])


def metric_weights_args(kind):
    key, flag = {"per_image": ("alexnet_weights", "--alexnet-weights"), "per_set": ("inception_weights", "--inception-weights")}[kind]
    return f"{flag} {config['metrics'][key]}" if config["metrics"][key] else ""


def weights_status(wildcards):
    """Metric jobs wait for the weights fetch (metrics.fetch_weights: true); it never fails offline."""
    return ["results/weights.json"] if config["metrics"]["fetch_weights"] else []


def weights_present(kind):
    """'present' or 'missing' at parse time: a params value, so metric jobs re-run once the weights arrive."""
    from strdiffusion.weights import target_path_no_torch

    name = {"per_image": "alexnet", "per_set": "inception"}[kind]
    key = f"{name}_weights"
    return "present" if target_path_no_torch(name, config["metrics"][key]).is_file() else "missing"


def weights_fetch_args(wildcards):
    m = config["metrics"]
    args = [f"--{name}-weights {shlex.quote(m[f'{name}_weights'])}" for name in ("alexnet", "inception") if m[f"{name}_weights"]]
    return " ".join(args)


def table_args(wildcards):
    ds = wildcards.dataset
    args = [f"--dataset {ds}", f"--methods {','.join(config['methods'])}", f"--bins {','.join(bins(ds))}"]
    args.append(f"--seed {config['seed']}")
    if config["datasets"][ds].get("reference_row"):
        args.append(f"--reference {config['datasets'][ds]['reference_row']}")
    return " ".join(args)


# ---------------------------------------------------------------------------------------------
# Training (workflow/rules/train.smk, issue 4): option and input functions of the train_* rules.


def train_masks_dir(wildcards):
    """Training masks: the pool, generated or imported from masks.train_source (polarity, resize: issue 15)."""
    return f"results/{wildcards.dataset}/masks/pool"


def train_args(net):
    """A params function giving the `strdiffusion train` options of network `net` (from config)."""

    def args(wildcards):
        t, m, s = config["train"], config["model"], config["sde"]
        critic = net == "critic"
        lr = t["critic_lr"] if critic else t["lr"]
        betas = t["critic_betas"] if critic else t["betas"]
        opts = [
            f"--nf {m['nf']}", f"--depth {m['depth']}", f"--critic-ngf {m['critic_ngf']}",
            f"--attn-heads {m['attn_heads']}", f"--attn-dim-head {m['attn_dim_head']}",
            f"--T {s['T']}", f"--max-sigma {s['max_sigma']}", f"--schedule {s['schedule']}", f"--eps {s['eps']}",
            f"--iterations {t['iterations']}", f"--batch-size {t['batch_size']}", f"--lr {lr}",
            f"--betas {betas[0]},{betas[1]}", f"--gamma {t['lr_gamma']}", f"--ema {t['ema']}",
            f"--warmup {t['lr_warmup']}", f"--guidance-state {t['guidance_state']}", f"--recipe {t['irsde_recipe']}",
            f"--val-count {t['val_count']}",
            f"--grad-clip {t['grad_clip']}", f"--loss {t['loss']}", f"--checkpoint-every {t['checkpoint_every']}",
            f"--workers {t['workers']}", f"--seed {config['seed']}", f"--size {config['image_size']}",
            f"--sigma {config['structure']['sigma_train']}", f"--amp {t.get('amp', 'none')}",
        ]
        if t["ema_warmup"]:
            opts.append("--ema-warmup")
        if t["lr_milestones"]:
            opts.append(f"--milestones {','.join(str(v) for v in t['lr_milestones'])}")
        return " ".join(opts)

    return args


def train_nproc(wildcards, resources):
    """Processes of one training job: one per GPU asked for (resources.gpu, set by profiles), at least 1."""
    return max(1, int(getattr(resources, "gpu", 0) or 0))
