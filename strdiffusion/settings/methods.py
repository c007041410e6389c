"""The inpainting methods and the network kinds: the one list of each, read by the workflow, the
train and inpaint stages, the checkpoints and the schema test.

``NETWORKS`` are the kinds of network trained (in this order) and stored in checkpoints of the same
names (``structure.pt``, ...); ``irsde`` is the texture UNet without guidance. ``CLASSICAL`` methods
need no network. ``DIFFUSION`` maps each diffusion method to the network kinds it samples with.

The workflow also knows each diffusion method's ``_fresh`` twin (``WORKFLOW_METHODS``): it samples the
networks trained in this run even when the config's ``checkpoints:`` keys point the plain method at given
files, so a table can hold rows from shipped checkpoints beside rows from networks trained from scratch.
The twin runs the same sampler as its base method (``base_method``); only its networks differ.

``IMAGE_METRICS`` and ``SET_METRICS`` are the metrics a run can ask for, per image and per set;
``FID_METHODS`` the ways FID's matrix square root can be taken.
"""
from __future__ import annotations

NETWORKS = ("structure", "texture", "critic", "irsde")
CLASSICAL = ("mean_fill", "telea", "navier_stokes", "biharmonic")
DIFFUSION = {
    "strdiffusion": ("structure", "texture", "critic"),
    "strdiffusion_noresample": ("structure", "texture"),
    "irsde": ("irsde",),
}
METHODS = CLASSICAL + tuple(DIFFUSION)
FRESH = "_fresh"
WORKFLOW_METHODS = METHODS + tuple(method + FRESH for method in DIFFUSION)
IMAGE_METRICS = ("psnr", "ssim", "l1", "lpips")
SET_METRICS = ("fid", "kid")
FID_METHODS = ("pytorch-fid", "exact")


def base_method(method: str) -> str:
    """The method a workflow row runs: ``irsde_fresh`` -> ``irsde``; any other name unchanged."""
    base = method.removesuffix(FRESH)
    return base if method.endswith(FRESH) and base in DIFFUSION else method


def is_fresh(method: str) -> bool:
    """Whether a workflow row always samples the networks trained in this run."""
    return base_method(method) != method


def method_networks(method: str) -> tuple[str, ...]:
    """Network kinds ``method`` needs at sampling time (none for a classical method)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    return DIFFUSION.get(method, ())


# ---- which networks the workflow's rows sample (config: methods, checkpoints) --------------------------


def _row_networks(method: str) -> tuple[str, ...]:
    """Network kinds a workflow row samples (none for a classical method)."""
    return DIFFUSION.get(base_method(method), ())


def row_models(config: dict, dataset: str, method: str) -> dict[str, str]:
    """Network file of each network kind a workflow row samples: the `checkpoints:` file when one is given
    (not for a `_fresh` row), else the one this run trains into results/<dataset>/models/."""
    fresh = is_fresh(method)
    return {net: (not fresh and config["checkpoints"].get(net)) or f"results/{dataset}/models/{net}.pt"
            for net in _row_networks(method)}


def needed_networks(config: dict) -> list[str]:
    """Network kinds the rows of ``config["methods"]`` sample, in a fixed order."""
    needed = {net for method in config["methods"] for net in _row_networks(method)}
    return [net for net in NETWORKS if net in needed]


def trained_networks(config: dict) -> list[str]:
    """Network kinds this run trains: those a `_fresh` row samples or that have no `checkpoints:` file."""
    trained = {net for method in config["methods"] for net in _row_networks(method)
               if is_fresh(method) or not config["checkpoints"].get(net)}
    return [net for net in NETWORKS if net in trained]


def given_checkpoints(config: dict) -> dict[str, str]:
    """`checkpoints:` files that a plain (not `_fresh`) row of ``config["methods"]`` samples, by network kind."""
    used = {net for method in config["methods"] for net in DIFFUSION.get(method, ())}
    return {net: path for net, path in config["checkpoints"].items() if path and net in used}


def curve_inputs(config: dict, dataset: str) -> dict[str, str]:
    """Learning curves to plot: each trained network's CSV (key `<net>`) and each given checkpoint a row
    samples (key `<net>_given`; the curve is in its metadata)."""
    sources = {net: f"results/{dataset}/curves/{net}.csv" for net in trained_networks(config)}
    sources.update({f"{net}_given": path for net, path in given_checkpoints(config).items()})
    return sources


def train_iterations(config: dict, net: str) -> int:
    """Training iterations of network ``net``: ``train.net_iterations[net]`` where given, else ``train.iterations``."""
    t = config["train"]
    return int((t.get("net_iterations") or {}).get(net, t["iterations"]))
