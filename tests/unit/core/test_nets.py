"""Networks: state-dict layout of the reference, outputs equal to the reference's, and invariants."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from strdiffusion.core.nets import ConditionalUNet, Critic, bake_spectral_norm, default_ch_mult
from strdiffusion.core.nets.critic import fir_downsample_2d, fir_kernel_2d

PARITY = Path(__file__).resolve().parents[2] / "fixtures" / "parity"


def _load(name):
    return torch.load(PARITY / f"{name}.pt", weights_only=True)


def _reference_layout(name):
    """[(key, shape)] from the reference's state-dict listing at nf=64, depth=4 (ngf=64)."""
    rows = []
    for line in (PARITY / f"{name}_state_dict.txt").read_text().splitlines():
        if line.strip():
            key, shape = line.split(" ", 1)
            rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return rows


@pytest.fixture(scope="module")
def texture_ref():
    return _load("texture_unet")


@pytest.fixture(scope="module")
def structure_ref():
    return _load("structure_unet")


@pytest.fixture(scope="module")
def critic_ref():
    return _load("discriminator")


def _unet_from(ref, guidance):
    net = ConditionalUNet(**ref["meta"]["ctor_kwargs"], guidance=guidance)
    net.load_state_dict(ref["state_dict"], strict=True)
    return net.eval()


# ---------------------------------------------------------------- layout of the paper-size nets

@pytest.mark.parametrize("name, build, n_params", [
    ("texture_unet", lambda: ConditionalUNet(3, 3, nf=64, depth=4, guidance=True), 163_333_763),
    ("structure_unet", lambda: ConditionalUNet(1, 1, nf=64, depth=4), 137_133_825),
    ("discriminator", lambda: Critic(nc=4, ngf=64, t_emb_dim=256), 12_741_377),
])
def test_state_dict_layout_matches_reference(name, build, n_params):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        net = build()
    ours = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    assert ours == _reference_layout(name)
    assert sum(p.numel() for p in net.parameters()) == n_params


def test_default_channel_multipliers():
    assert default_ch_mult(4) == (1, 2, 4, 8)
    assert default_ch_mult(3) == (1, 2, 4)


# ---------------------------------------------------------------- parity with the reference

def test_texture_unet_parity(texture_ref):
    net = _unet_from(texture_ref, guidance=True)
    first, second = texture_ref["inputs"]
    with torch.no_grad():
        out0 = net(first["xt"], first["cond"], first["time"], first["S"])
        out1 = net(second["xt"], second["cond"], second["time_int"], second["S"])
        out1_0d = net(second["xt"], second["cond"], second["time"], second["S"])
    torch.testing.assert_close(out0, texture_ref["outputs"][0], rtol=0, atol=1e-5)
    torch.testing.assert_close(out1, texture_ref["outputs"][1], rtol=0, atol=1e-5)
    torch.testing.assert_close(out1_0d, texture_ref["outputs"][1], rtol=0, atol=1e-5)


def test_texture_unet_train_mode_parity(texture_ref):
    """Train mode runs one spectral-norm power iteration; output and updated u, v must agree."""
    net = _unet_from(texture_ref, guidance=True).train()
    first = texture_ref["inputs"][0]
    with torch.no_grad():
        out = net(first["xt"], first["cond"], first["time"], first["S"])
    torch.testing.assert_close(out, texture_ref["outputs_train_mode"], rtol=0, atol=1e-5)
    # The power iteration changes the output by more than the tolerance, so this is a real check.
    assert (texture_ref["outputs_train_mode"] - texture_ref["outputs"][0]).abs().max() > 3e-5
    state = net.state_dict()
    assert len(texture_ref["train_mode_uv_after"]) == 16
    for key, expected in texture_ref["train_mode_uv_after"].items():
        torch.testing.assert_close(state[key], expected, rtol=0, atol=1e-6, msg=key)


def test_structure_unet_parity(structure_ref):
    net = _unet_from(structure_ref, guidance=False)
    first, second = structure_ref["inputs"]
    with torch.no_grad():
        out0 = net(first["xt"], first["cond"], first["time"])
        out1 = net(second["xt"], second["cond"], second["time_int"])
    torch.testing.assert_close(out0, structure_ref["outputs"][0], rtol=0, atol=1e-5)
    torch.testing.assert_close(out1, structure_ref["outputs"][1], rtol=0, atol=1e-5)


def test_critic_parity(critic_ref):
    net = Critic(nc=4, ngf=8, t_emb_dim=256)
    net.load_state_dict(critic_ref["state_dict"], strict=True)
    net.eval()
    with torch.no_grad():
        for inputs, expected in zip(critic_ref["inputs"], critic_ref["outputs"]):
            out = net(inputs["t"], inputs["x_t"], inputs["S_optimum"])
            assert out.shape == expected.shape
            torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)


# ---------------------------------------------------------------- behaviour

def test_critic_stddev_group_one_scores_each_sample_alone(critic_ref):
    net = Critic(nc=4, ngf=8, t_emb_dim=256)
    net.load_state_dict(critic_ref["state_dict"])
    batch = critic_ref["inputs"][1]
    with torch.no_grad():
        grouped = net(batch["t"], batch["x_t"], batch["S_optimum"])
        alone = net(batch["t"], batch["x_t"], batch["S_optimum"], stddev_group=1)
        singles = torch.cat([net(batch["t"][b:b + 1], batch["x_t"][b:b + 1], batch["S_optimum"][b:b + 1])
                             for b in range(4)])
    torch.testing.assert_close(alone, singles, rtol=0, atol=1e-4)
    with torch.inference_mode():  # one t for the batch, as the sampler calls it: bit-identical scores
        x, s = batch["x_t"], batch["S_optimum"]
        together = net(7, x, s, stddev_group=1)
        one_by_one = torch.cat([net(7, x[b:b + 1], s[b:b + 1]) for b in range(4)])
    assert torch.equal(together, one_by_one)  # batch-size independent on CPU (nets.layers, per-row head)
    assert (grouped - alone).abs().max() > 1e-2  # the group of 4 couples the samples
    # for a group of one the two-pass variance gives what torch.var gives: the channel sqrt(0 + 1e-8)
    h = torch.randn(3, 37, 9, 7)
    general = torch.sqrt(h.reshape(1, -1, 1, 37, 9, 7).var(0, unbiased=False) + 1e-8).mean([2, 3, 4], keepdim=True)
    expected = torch.cat([h, general.squeeze(2).repeat(1, 1, 9, 7)], dim=1)
    assert torch.equal(net._minibatch_stddev(h, 1), expected)
    with pytest.raises(ValueError, match="not divisible"):
        net(1, batch["x_t"][:3].repeat(2, 1, 1, 1), batch["S_optimum"][:3].repeat(2, 1, 1, 1))


def test_fir_downsample_known_values():
    """(1,3,3,1)/8 taps with zero padding: ones -> 1 inside, 7/8 on edges, 49/64 in corners."""
    out = fir_downsample_2d(torch.ones(1, 2, 8, 8), fir_kernel_2d((1, 3, 3, 1)))
    assert out.shape == (1, 2, 4, 4)
    torch.testing.assert_close(out[0, 0, 1:3, 1:3], torch.ones(2, 2))
    torch.testing.assert_close(out[0, 1, 0, 1:3], torch.full((2,), 7 / 8))
    torch.testing.assert_close(out[0, 0, 3, 3], torch.tensor(49 / 64))
    # An impulse at (2, 2) reaches outputs (0..1, 0..1) with taps (1/8, 3/8) per axis.
    impulse = torch.zeros(1, 1, 8, 8)
    impulse[0, 0, 2, 2] = 1
    out = fir_downsample_2d(impulse, fir_kernel_2d((1, 3, 3, 1)))[0, 0]
    expected = torch.zeros(4, 4)
    expected[:2, :2] = torch.tensor([[1, 3], [3, 9]]) / 64
    torch.testing.assert_close(out, expected)


def test_texture_unet_guidance_changes_output(texture_ref):
    net = _unet_from(texture_ref, guidance=True)
    first = texture_ref["inputs"][0]
    with torch.no_grad():
        out = net(first["xt"], first["cond"], first["time"], first["S"])
        other = net(first["xt"], first["cond"], first["time"], 1 - first["S"])
    assert (out - other).abs().max() > 1e-3
    with pytest.raises(ValueError, match="guidance"):
        net(first["xt"], first["cond"], first["time"])
    structure_net = ConditionalUNet(1, 1, nf=4, depth=2)
    with pytest.raises(ValueError, match="without guidance"):
        structure_net(first["xt"][:, :1], first["cond"][:, :1], 3, first["S"])


def test_unet_time_forms_and_batch_independence():
    torch.manual_seed(0)
    net = ConditionalUNet(1, 1, nf=16, depth=3).eval()
    g = torch.Generator().manual_seed(0)
    xt, cond = torch.randn(3, 1, 24, 20, generator=g), torch.rand(3, 1, 24, 20, generator=g)
    with torch.no_grad():
        ref = net(xt, cond, 17)
        for t in (torch.tensor(17), torch.tensor([17, 17, 17]), torch.full((3, 1, 1, 1), 17)):
            torch.testing.assert_close(net(xt, cond, t), ref, rtol=0, atol=1e-6)
        per_sample = net(xt, cond, torch.tensor([1, 17, 90]))
        torch.testing.assert_close(per_sample[1:2], net(xt[1:2], cond[1:2], 17), rtol=0, atol=1e-5)
        assert (per_sample[0] - ref[0]).abs().max() > 1e-4  # time actually matters
    assert ref.shape == xt.shape


@pytest.mark.parametrize("guidance", [False, True])
def test_unet_tiny_config_shapes_and_gradients(guidance):
    torch.manual_seed(0)
    net = ConditionalUNet(3, 3, nf=16, depth=3, guidance=guidance).train()
    xt, cond = torch.randn(2, 3, 20, 36), torch.rand(2, 3, 20, 36)
    s = (torch.rand(2, 1, 20, 36) > 0.5).float() if guidance else None
    out = net(xt, cond, torch.tensor([3, 50]), s)
    assert out.shape == xt.shape
    out.square().mean().backward()
    with pytest.raises(ValueError, match="too small"):
        net(xt[..., :4, :4], cond[..., :4, :4], 3, None if s is None else s[..., :4, :4])
    no_grad = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert no_grad == []


def test_unet_custom_ch_mult():
    with torch.device("meta"):
        net = ConditionalUNet(1, 1, nf=8, depth=3, ch_mult=(1, 1, 2))
    state = net.state_dict()
    assert state["downs.1.3.weight"].shape == (16, 8, 4, 4)  # level 1: 8 -> 16
    assert state["downs.2.3.weight"].shape == (32, 16, 3, 3)  # last level: 16 -> 2 * 16
    assert state["mid_block1.block1.proj.weight"].shape == (32, 32, 3, 3)
    with pytest.raises(ValueError, match="ch_mult"):
        ConditionalUNet(1, 1, nf=8, depth=3, ch_mult=(1, 2))


def test_unet_channels_last_gives_same_output(texture_ref):
    net = _unet_from(texture_ref, guidance=True)
    first = texture_ref["inputs"][0]
    with torch.no_grad():
        expected = net(first["xt"], first["cond"], first["time"], first["S"])
        net = net.to(memory_format=torch.channels_last)
        out = net(*(first[k].contiguous(memory_format=torch.channels_last) for k in ("xt", "cond")),
                  first["time"], first["S"].contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_bake_spectral_norm_keeps_eval_output(texture_ref):
    net = _unet_from(texture_ref, guidance=True)
    second = texture_ref["inputs"][1]
    bake_spectral_norm(net)
    state = net.state_dict()
    assert "downs.0.4.conv_0.weight" in state and not any(k.endswith("weight_orig") for k in state)
    with torch.no_grad():
        out = net.train()(second["xt"], second["cond"], second["time_int"], second["S"])  # no power iteration left
    torch.testing.assert_close(out, texture_ref["outputs"][1], rtol=0, atol=1e-5)


def test_inference_convolutions_do_not_depend_on_batch_size():
    """A 64->64 3x3 conv at 16x16: PyTorch's own batch-1 kernel differed from the batched one by ~1e-5."""
    from strdiffusion.core.nets.layers import Conv2d

    torch.manual_seed(0)
    conv = Conv2d(64, 64, 3, padding=1).eval()
    x = torch.randn(16, 64, 16, 16)
    with torch.inference_mode():
        together = conv(x)
        one_by_one = torch.cat([conv(x[b:b + 1]) for b in range(16)])
        plain = torch.cat([F.conv2d(x[b:b + 1], conv.weight, conv.bias, padding=1) for b in range(16)])
    assert torch.equal(together, one_by_one)
    torch.testing.assert_close(together, plain, rtol=0, atol=1e-4)  # same convolution, other summation order
    # training keeps autograd's convolution: gradients flow to the weights
    conv.train()
    conv(x[:2]).square().mean().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="zero padding"):
        Conv2d(3, 3, 3, padding=1, padding_mode="reflect")


def test_inference_attention_does_not_depend_on_batch_size():
    """One head over 64x64 positions: a lone image's product is split along its 4,096-term sums over the
    threads, a batch's by image; the attention multiplies image by image, so both give the same bits."""
    from strdiffusion.core.nets.layers import matmul
    from strdiffusion.core.nets.unet import LinearAttention

    torch.manual_seed(0)
    attention = LinearAttention(8, heads=1, dim_head=16).eval()
    x = torch.randn(3, 8, 64, 64)
    with torch.inference_mode():
        together = attention(x)
        one_by_one = torch.cat([attention(x[b:b + 1]) for b in range(3)])
        k, v = torch.randn(3, 1, 16, 4096), torch.randn(3, 1, 16, 4096)
        batched = matmul(k, v.transpose(-1, -2))
        plain = k @ v.transpose(-1, -2)
    assert torch.equal(together, one_by_one)
    assert torch.equal(batched, torch.cat([k[b:b + 1] @ v[b:b + 1].transpose(-1, -2) for b in range(3)]))
    torch.testing.assert_close(batched, plain, rtol=0, atol=1e-3)  # the same product, summed in another order
    k = k.clone().requires_grad_(True)  # autograd keeps the one batched product
    assert matmul(k, v.clone().transpose(-1, -2)).grad_fn.name() != "StackBackward0"
