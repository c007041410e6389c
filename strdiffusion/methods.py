"""The inpainting methods and the network kinds: the one list of each, read by the workflow, the
train and inpaint stages, the checkpoints and the schema test.

``NETWORKS`` are the kinds of network trained (in this order) and stored in checkpoints of the same
names (``structure.pt``, ...); ``irsde`` is the texture UNet without guidance. ``CLASSICAL`` methods
need no network. ``DIFFUSION`` maps each diffusion method to the network kinds it samples with.

The workflow also knows each diffusion method's ``_fresh`` twin (``WORKFLOW_METHODS``): it samples the
networks trained in this run even when the config's ``checkpoints:`` keys point the plain method at given
files, so a table can hold rows from shipped checkpoints beside rows from networks trained from scratch.
The twin runs the same sampler as its base method (``base_method``); only its networks differ.
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
