"""The inpainting methods: the one list the workflow, the inpaint stage and the schema test read.

``CLASSICAL`` methods need no network. ``DIFFUSION`` maps each diffusion method to the network
kinds it samples with (checkpoints of the same names: ``structure.pt``, ...).
"""
from __future__ import annotations

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
