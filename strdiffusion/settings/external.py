"""Which rows of a run are outside methods (config ``external_methods:``) and where their outputs are.

Read by the workflow when it parses, the settings, and the metric, table and figure stages; no torch, cv2
or pandas. The import stage that fills the outputs' folders is :mod:`strdiffusion.inpainting.outside`.
"""
from __future__ import annotations

import json
import string
from pathlib import Path

from strdiffusion.io.errors import UserError

IMPORTED = "imported"  # the folder of an outside row's outputs, beside the built-in rows' shard_<n>
SIDECAR = "imported.json"
RESIZE = {"none": None, "nearest": "INTER_NEAREST", "bilinear": "INTER_LINEAR", "bicubic": "INTER_CUBIC",
          "area": "INTER_AREA", "lanczos": "INTER_LANCZOS4"}
PLACEHOLDERS = ("dataset", "bin", "image_id")


# ---- the config --------------------------------------------------------------------


def external_methods(config: dict) -> dict:
    """``external_methods:`` of a validated config ({} when absent)."""
    return dict(config.get("external_methods") or {})


def row_methods(config: dict) -> list[str]:
    """Every row of the tables and figures: the built-in ``methods`` then the outside ones."""
    return list(config["methods"]) + [m for m in external_methods(config) if m not in config["methods"]]


def check_config(config: dict, source: str) -> None:
    """One-line errors for outside rows the schema cannot catch: a name of a built-in row, a bad template."""
    from strdiffusion.settings.methods import WORKFLOW_METHODS

    for method, entry in external_methods(config).items():
        key = f"external_methods.{method}"
        if method in WORKFLOW_METHODS:
            raise UserError(f"{source}: config key '{key}': '{method}' is a built-in method; choose another name")
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(entry["path"]) if name is not None}
        except ValueError as exc:
            raise UserError(f"{source}: config key '{key}.path': {exc} in '{entry['path']}'") from None
        bad = sorted(fields - set(PLACEHOLDERS))
        if bad or "image_id" not in fields:
            raise UserError(f"{source}: config key '{key}.path': '{entry['path']}' must name each output by "
                            f"{{image_id}} and may use only {{bin}}, {{dataset}} besides"
                            + (f" (unknown: {', '.join('{' + b + '}' for b in bad)})" if bad else ""))


def prediction_dirs(config: dict, dataset: str, method: str, bins, shards) -> list[str]:
    """Folders holding a row's outputs of the given bins: the inpaint shards of a built-in row, the imported
    folder of an outside one."""
    if method in external_methods(config):
        return [f"results/{dataset}/inpaint/{method}/{b}/{IMPORTED}" for b in bins]
    return [f"results/{dataset}/inpaint/{method}/{b}/shard_{s}" for b in bins for s in shards]


def output_folder(template: str, dataset: str, bin_name: str) -> str:
    """The fixed folder above an outside row's outputs of one bin ('' when it is not fixed): the import job's
    input, so that outputs added or removed there make it run again."""
    path = template.format(dataset=dataset, bin=bin_name, image_id="\0")
    head = path.split("\0")[0]
    folder = head if head.endswith("/") else head.rpartition("/")[0]
    return str(Path(folder)) if folder else ""


def import_inputs(config: dict, dataset: str, method: str, bin_name: str) -> dict:
    """Inputs of the import job of one bin: pairs, test images and the outputs' folder when it exists."""
    inputs = {"pairs": f"results/{dataset}/masks/pairs.csv", "gt": f"results/{dataset}/data/test"}
    folder = output_folder(external_methods(config)[method]["path"], dataset, bin_name)
    if folder and Path(folder).is_dir():
        inputs["outputs"] = folder
    return inputs


# ---- the metric stage: which images a row is scored on ------------------------------------------------


def missing_ids(pred_dirs) -> set[str]:
    """Ids an outside row has no output for (allowed by ``allow_partial``), from the imported folders'
    sidecars; empty for a built-in row."""
    missing = set()
    for d in [pred_dirs] if isinstance(pred_dirs, (str, Path)) else pred_dirs:
        sidecar = Path(d) / SIDECAR
        if sidecar.is_file():
            missing.update(json.loads(sidecar.read_text())["missing"])
    return missing


