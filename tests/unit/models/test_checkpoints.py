"""Checkpoints: round trips, strict loading with readable errors, and refusal of unsafe files."""
import os
import pickle

import pytest
import torch

from strdiffusion import __version__
from strdiffusion.core.nets import ConditionalUNet, Critic
from strdiffusion.core.sde import IRSDE
from strdiffusion.io.errors import UserError
from strdiffusion.models.checkpoints import (
    FORMAT,
    NET_KINDS,
    build_network,
    default_ctor_kwargs,
    load_checkpoint,
    save_checkpoint,
)

TINY = {"structure": {"nf": 8, "depth": 2}, "texture": {"nf": 8, "depth": 2}, "irsde": {"nf": 8, "depth": 2},
        "critic": {"ngf": 4}}


def _inputs(kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = 1 if kind == "structure" else 3
    xt, cond = torch.randn(2, c, 16, 16, generator=g), torch.rand(2, c, 16, 16, generator=g)
    s = torch.rand(2, 1, 16, 16, generator=g)
    return xt, cond, s


def _run(net, kind):
    xt, cond, s = _inputs(kind)
    with torch.no_grad():
        if kind == "critic":
            return net(torch.tensor([3, 40]), xt, s)
        return net(xt, cond, 7, s if kind == "texture" else None)


def _perturbed(kind):
    """A tiny net whose weights are not the default init (so a lost tensor would show)."""
    torch.manual_seed(0)
    net = build_network(kind, **TINY[kind])
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def test_build_network_kinds():
    assert isinstance(build_network("texture", nf=8, depth=2), ConditionalUNet)
    assert build_network("texture", nf=8, depth=2).guidance
    assert not build_network("irsde", nf=8, depth=2).guidance
    assert isinstance(build_network("critic", ngf=4), Critic)
    assert default_ctor_kwargs("structure") == {"in_nc": 1, "out_nc": 1, "nf": 64, "depth": 4, "guidance": False}
    with pytest.raises(UserError, match="unknown network kind"):
        build_network("generator")
    with pytest.raises(UserError, match="guidance"):
        build_network("texture", nf=8, depth=2, guidance=False)
    with pytest.raises(UserError, match="invalid settings"):
        build_network("critic", nf=8)


@pytest.mark.parametrize("kind", NET_KINDS)
def test_checkpoint_round_trip(tmp_path, kind):
    net = _perturbed(kind)
    path = tmp_path / "ckpt" / f"{kind}.pt"
    save_checkpoint(path, net, kind, TINY[kind], IRSDE(T=100), extra={"iteration": 1200, "structure_sigma": 3.0})
    assert sorted(os.listdir(path.parent)) == [f"{kind}.pt"]  # no temporary files left

    loaded, meta = load_checkpoint(path, kind=kind, expect_sde={"T": 100, "max_sigma": 30, "schedule": "cosine"})
    assert not loaded.training
    assert torch.equal(_run(loaded, kind), _run(net, kind))
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert meta["format"] == FORMAT and meta["version"] == 1 and meta["kind"] == kind
    assert meta["sde"] == {"T": 100, "max_sigma": 30.0, "schedule": "cosine", "eps": 0.005}
    assert meta["iteration"] == 1200 and meta["structure_sigma"] == 3.0
    assert meta["package_version"] == __version__
    assert meta["ctor_kwargs"] == {**default_ctor_kwargs(kind), **TINY[kind]}
    assert "state_dict" not in meta and meta["path"] == str(path)
    # The file itself is a plain weights-only payload.
    raw = torch.load(path, weights_only=True)
    assert set(raw["state_dict"]) == set(net.state_dict())


def test_checkpoint_spectral_norm_buffers_survive(tmp_path):
    """weight_u / weight_v are buffers: after train-mode steps they must be saved and restored."""
    net = _perturbed("texture").train()
    xt, cond, s = _inputs("texture")
    with torch.no_grad():
        net(xt, cond, 5, s)
    net.eval()
    save_checkpoint(tmp_path / "t.pt", net, "texture", TINY["texture"], None)
    loaded, meta = load_checkpoint(tmp_path / "t.pt")
    assert meta["sde"] is None
    assert torch.equal(loaded.state_dict()["downs.0.4.conv_0.weight_u"], net.state_dict()["downs.0.4.conv_0.weight_u"])
    assert torch.equal(_run(loaded, "texture"), _run(net, "texture"))


def test_checkpoint_renamed_key_is_named(tmp_path):
    net = _perturbed("structure")
    path = tmp_path / "s.pt"
    save_checkpoint(path, net, "structure", TINY["structure"], IRSDE(T=100))
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["final_conv.weights"] = payload["state_dict"].pop("final_conv.weight")
    torch.save(payload, path)
    with pytest.raises(UserError) as err:
        load_checkpoint(path, kind="structure")
    message = str(err.value)
    assert "missing keys: final_conv.weight" in message
    assert "unexpected keys: final_conv.weights" in message
    assert str(path) in message


def test_checkpoint_wrong_shape_is_named(tmp_path):
    net = _perturbed("irsde")
    path = tmp_path / "i.pt"
    save_checkpoint(path, net, "irsde", TINY["irsde"], IRSDE(T=100))
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["final_conv.bias"] = torch.zeros(5)
    torch.save(payload, path)
    with pytest.raises(UserError, match=r"final_conv.bias \(5,\) in the file vs \(3,\) in the network"):
        load_checkpoint(path)


def test_checkpoint_wrong_T_names_both_values(tmp_path):
    path = tmp_path / "t.pt"
    save_checkpoint(path, _perturbed("texture"), "texture", TINY["texture"], IRSDE(T=400))
    with pytest.raises(UserError, match=r"trained with T=400 but config says T=100 \(key sde.T\)"):
        load_checkpoint(path, expect_sde={"T": 100, "max_sigma": 30.0})
    with pytest.raises(UserError, match=r"schedule=cosine but config says schedule=linear"):
        load_checkpoint(path, expect_sde=IRSDE(T=400, schedule="linear"))
    with pytest.raises(UserError, match=r"nf=8 but config says nf=16 \(key model.nf\)"):
        load_checkpoint(path, ctor_kwargs={"nf": 16})
    with pytest.raises(UserError, match="holds a texture network, but a structure network"):
        load_checkpoint(path, kind="structure")
    load_checkpoint(path, kind="texture", expect_sde=IRSDE(T=400), ctor_kwargs={"nf": 8, "depth": 2})


class _Malicious:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch_save", "plain_pickle"])
def test_checkpoint_malicious_pickle_is_refused(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"state_dict": {"w": torch.zeros(1)}, "evil": _Malicious(marker)}
    if writer == "torch_save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    with pytest.raises(UserError, match="cannot be loaded safely") as err:
        load_checkpoint(path, kind="structure", expect_sde={"T": 100})
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_checkpoint_not_a_torch_file(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("this is not a checkpoint\n")
    with pytest.raises(UserError, match="notes.pt cannot be loaded safely"):
        load_checkpoint(path)
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.pt")
    torch.save([torch.zeros(2)], path)
    with pytest.raises(UserError, match="neither a strdiffusion checkpoint nor a state dict"):
        load_checkpoint(path)
    torch.save({"optimizer": {"lr": 0.1}}, path)
    with pytest.raises(UserError, match="keys optimizer"):
        load_checkpoint(path)


def test_checkpoint_bare_state_dict_with_module_prefix(tmp_path):
    """The authors' release format: a bare state dict, possibly saved from DataParallel."""
    net = _perturbed("structure")
    path = tmp_path / "authors_structure.pth"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)

    with pytest.raises(UserError, match="set sde.T"):
        load_checkpoint(path, kind="structure", ctor_kwargs=TINY["structure"])
    loaded, meta = load_checkpoint(path, kind="structure", ctor_kwargs=TINY["structure"], expect_sde={"T": 100})
    assert torch.equal(_run(loaded, "structure"), _run(net, "structure"))
    assert meta["format"] == "state_dict" and meta["sde"] == {"T": 100} and meta["kind"] == "structure"
    # Without kind, the kind is recognised from the keys.
    _, meta = load_checkpoint(path, ctor_kwargs=TINY["structure"], expect_sde={"T": 100})
    assert meta["kind"] == "structure"


@pytest.mark.parametrize("kind", ["texture", "critic", "irsde"])
def test_checkpoint_bare_state_dict_kind_is_recognised(tmp_path, kind):
    path = tmp_path / "bare.pth"
    torch.save(_perturbed(kind).state_dict(), path)
    _, meta = load_checkpoint(path, ctor_kwargs=TINY[kind], expect_sde={"T": 400})
    assert meta["kind"] == kind


def test_checkpoint_bare_state_dict_size_mismatch_points_at_config(tmp_path):
    path = tmp_path / "bare.pth"
    torch.save(_perturbed("critic").state_dict(), path)  # ngf 4, but the default is the paper's 64
    with pytest.raises(UserError, match="shape mismatches: .*model.critic_ngf"):
        load_checkpoint(path, kind="critic", expect_sde={"T": 400})


def test_save_checkpoint_refuses_inconsistent_input(tmp_path):
    net = _perturbed("structure")
    path = tmp_path / "s.pt"
    with pytest.raises(ValueError, match="does not match ctor_kwargs"):
        save_checkpoint(path, net, "structure", {"nf": 16, "depth": 2}, None)
    with pytest.raises(ValueError, match="may not override"):
        save_checkpoint(path, net, "structure", TINY["structure"], None, extra={"kind": "texture"})
    with pytest.raises(TypeError, match="plain python values"):
        save_checkpoint(path, net, "structure", TINY["structure"], None, extra={"when": object()})
    assert list(tmp_path.iterdir()) == []


def test_save_checkpoint_unwraps_compiled_and_parallel(tmp_path):
    net = _perturbed("critic")
    save_checkpoint(tmp_path / "c.pt", torch.nn.DataParallel(net), "critic", TINY["critic"], None)
    loaded, _ = load_checkpoint(tmp_path / "c.pt", kind="critic")
    assert torch.equal(_run(loaded, "critic"), _run(net, "critic"))


@pytest.mark.parametrize("kind", NET_KINDS)
def test_shrink_stores_float16_weights_that_load_into_float32_nets(tmp_path, kind):
    from strdiffusion.io.files import sha256_of
    from strdiffusion.models.shrink import shrink

    net = _perturbed(kind)
    src, dst = tmp_path / "full.pt", tmp_path / "half" / "net.pt"
    save_checkpoint(src, net, kind, TINY[kind], None, extra={"iteration": 12, "curve": {"iteration": [0, 12]}})
    meta = shrink(src, dst)
    assert meta["stored_dtype"] == "float16" and meta["source_sha256"] == sha256_of(src)
    payload = torch.load(dst, weights_only=True)
    floats = [v for v in payload["state_dict"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert payload["iteration"] == 12 and payload["curve"] == {"iteration": [0, 12]}  # metadata kept
    assert dst.stat().st_size < 0.75 * src.stat().st_size
    loaded, lmeta = load_checkpoint(dst, kind=kind, ctor_kwargs=TINY[kind])
    assert lmeta["stored_dtype"] == "float16"
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    for (name, a), b in zip(net.state_dict().items(), loaded.state_dict().values()):
        if a.is_floating_point():  # each weight is its float16 rounding, no more
            torch.testing.assert_close(b, a.half().float(), rtol=0, atol=0, msg=name)
            assert (b - a).abs().max() <= a.abs().max() * 2 ** -11 + 1e-7, name
    ref, out = _run(net, kind), _run(loaded, kind)
    # relative output change: about 4e-4; the perturbed texture net (spectral norm with stale u, v) amplifies to 2e-2
    assert (out - ref).abs().max() < (5e-2 if kind == "texture" else 2e-3) * ref.abs().max()
    assert not torch.equal(out, ref)  # the rounding is real: a test that compared a file with itself would pass


def test_shrink_refuses_bad_input_and_leaves_nothing(tmp_path):
    from strdiffusion.models.shrink import shrink

    net = _perturbed("irsde")
    src = tmp_path / "full.pt"
    save_checkpoint(src, net, "irsde", TINY["irsde"], None)
    half = tmp_path / "half.pt"
    shrink(src, half)
    with pytest.raises(UserError, match="already stored as float16"):
        shrink(half, tmp_path / "again.pt")
    with pytest.raises(UserError, match="overwrite its source"):
        shrink(src, src)
    torch.save(net.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(UserError, match="bare state dict"):
        shrink(tmp_path / "bare.pt", tmp_path / "out.pt")
    with torch.no_grad():
        net.init_conv.weight[0, 0, 0, 0] = 1e6
    save_checkpoint(tmp_path / "huge.pt", net, "irsde", TINY["irsde"], None)
    with pytest.raises(UserError, match=r"init_conv.weight holds 1e\+06, outside float16"):
        shrink(tmp_path / "huge.pt", tmp_path / "out.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare.pt", "full.pt", "half.pt", "huge.pt"]


def test_shrink_cli_one_line_error(tmp_path):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "strdiffusion", "shrink", str(tmp_path / "nope.pt"),
                          str(tmp_path / "out.pt")], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.strip() == f"error: checkpoint {tmp_path / 'nope.pt'} does not exist"


def test_checkpoint_weights_compare_command_of_the_docs(tmp_path):
    """docs/reliability.md's command: same weights with other metadata (timings, paths) is `same weights`,
    although the files differ; one changed tensor is `different weights`, exit status 1."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    text = (root / "docs" / "reliability.md").read_text()
    block = text[text.index("## Comparing two checkpoints"):]
    command = re.search(r"```bash\n(.*?)```", block, re.S)[1].strip()
    net = _perturbed("irsde")
    a, b, c = (tmp_path / name for name in ("a.pt", "b.pt", "c.pt"))
    save_checkpoint(a, net, "irsde", TINY["irsde"], IRSDE(T=10), extra={"train_seconds": 12.5, "command": "/x/a"})
    save_checkpoint(b, net, "irsde", TINY["irsde"], IRSDE(T=10), extra={"train_seconds": 13.1, "command": "/y/b"})
    with torch.no_grad():
        next(net.parameters()).view(-1)[0] += 1e-3
    save_checkpoint(c, net, "irsde", TINY["irsde"], IRSDE(T=10), extra={"train_seconds": 12.5, "command": "/x/a"})
    assert a.read_bytes() != b.read_bytes()
    env = dict(os.environ, PYTHONPATH=str(root))
    for other, said, status in ((b, "same weights", 0), (c, "different weights", 1)):
        argv = command.replace("A.pt B.pt", f"{a} {other}")
        res = subprocess.run(["bash", "-c", argv.replace("python ", f"{sys.executable} ", 1)], env=env,
                             capture_output=True, text=True, timeout=120)
        assert (res.returncode, res.stdout.strip()) == (status, said), res.stderr[-2000:]
