"""Tests of strdiffusion/reporting/curves.py: the learning-curves figure from CSVs and checkpoint metadata."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from strdiffusion.io.errors import UserError
from strdiffusion.models import checkpoints as checkpoints
from strdiffusion.reporting import curves as curves
from strdiffusion.stages import curves as curves_stage


def _curve(kind: str) -> dict:
    its = [0, 10, 20]
    row = {"iteration": its, "seconds": [0.0, 5.0, 10.0], "loss": [float("nan"), 0.5, 0.3], "lr": [1e-3] * 3}
    row.update({"auc": [0.5, 0.6, 0.8], "accuracy": [0.5, 0.55, 0.7]} if kind == "critic" else
               {"hole_psnr": [5.0, 12.0, 18.0], "ssim": [0.3, 0.5, 0.6], "clipped": [0.9, 0.1, 0.0]})
    return row


def test_learning_curves_from_csv_and_checkpoint(tmp_path):
    pd.DataFrame(_curve("structure")).to_csv(tmp_path / "structure.csv", index=False)
    net = checkpoints.build_network("critic", ngf=4)
    checkpoints.save_checkpoint(tmp_path / "critic.pt", net, "critic", {"ngf": 4}, None, {"curve": _curve("critic")})
    loaded = curves.load_curve(tmp_path / "critic.pt")
    assert loaded["auc"].tolist() == [0.5, 0.6, 0.8]
    out = tmp_path / "fig" / "learning_curves.png"
    assert curves_stage.main(["--inputs", f"structure={tmp_path / 'structure.csv'}", f"critic={tmp_path / 'critic.pt'}",
                        "--out", str(out)]) == 0
    with Image.open(out) as im:
        assert im.size[0] > 2 * im.size[1]  # two panels side by side
        assert np.asarray(im.convert("L")).std() > 10  # something was drawn
    assert out.with_suffix(".pdf").stat().st_size > 1000


def test_learning_curves_bad_inputs(tmp_path):
    with pytest.raises(UserError, match="no such learning curve"):
        curves_stage.main(["--inputs", f"texture={tmp_path / 'missing.csv'}", "--out", str(tmp_path / "x.png")])
    net = checkpoints.build_network("critic", ngf=4)
    checkpoints.save_checkpoint(tmp_path / "old.pt", net, "critic", {"ngf": 4}, None)
    with pytest.raises(UserError, match="carries no learning curve"):
        curves_stage.main(["--inputs", f"critic={tmp_path / 'old.pt'}", "--out", str(tmp_path / "x.png")])
    with pytest.raises(UserError, match="NET=PATH"):
        curves_stage.main(["--inputs", "nonsense", "--out", str(tmp_path / "x.png")])
    assert not (tmp_path / "x.png").exists()


def test_one_panel_shows_a_fresh_run_beside_a_given_checkpoint(tmp_path):
    pd.DataFrame(_curve("texture")).to_csv(tmp_path / "texture.csv", index=False)
    net = checkpoints.build_network("texture", nf=4, depth=2)
    longer = {k: v + v[-1:] for k, v in _curve("texture").items()}
    longer["iteration"][-1] = 60
    checkpoints.save_checkpoint(tmp_path / "texture.pt", net, "texture", {"nf": 4, "depth": 2}, None, {"curve": longer})
    out = tmp_path / "one.png"
    # the checkpoint first on the command line: the panel still draws this run solid, the checkpoint dashed
    assert curves_stage.main(["--inputs", f"texture={tmp_path / 'texture.pt'}", f"texture={tmp_path / 'texture.csv'}",
                        "--out", str(out)]) == 0
    with Image.open(out) as im:
        assert im.size[0] < 1.5 * im.size[1]  # one panel, not two
    with pytest.raises(UserError, match="twice from the same kind of source"):
        curves_stage.main(["--inputs", f"texture={tmp_path / 'texture.csv'}", f"texture={tmp_path / 'texture.csv'}",
                     "--out", str(tmp_path / "two.png")])
    assert not (tmp_path / "two.png").exists()
