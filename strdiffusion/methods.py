"""The inpainting methods and the network kinds: the one list of each, read by the workflow, the
train and inpaint stages, the checkpoints and the schema test.

``NETWORKS`` are the kinds of network trained (in this order) and stored in checkpoints of the same
names (``structure.pt``, ...); ``irsde`` is the texture UNet without guidance. ``CLASSICAL`` methods
need no network. ``DIFFUSION`` maps each diffusion method to the network kinds it samples with.
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


def method_networks(method: str) -> tuple[str, ...]:
    """Network kinds ``method`` needs at sampling time (none for a classical method)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    return DIFFUSION.get(method, ())
