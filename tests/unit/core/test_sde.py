"""IR-SDE math: agreement with the reference implementation's values and analytic invariants."""
from pathlib import Path

import pytest
import torch

from strdiffusion.core.sde import IRSDE, randn_like_per_sample

PARITY = Path(__file__).resolve().parents[2] / "fixtures" / "parity"


@pytest.fixture(scope="module")
def sde_ref():
    return torch.load(PARITY / "sde.pt", weights_only=True)


def _ours(sde, inputs, t):
    """Our functions under the reference's output names (see the parity README)."""
    x0, mu, xt, noise, randn = (inputs[k] for k in ("x0", "mu", "xt", "noise", "fixed_randn"))
    score = sde.score_from_noise(noise, t)
    out = {
        "mu_bar(x0,t)": sde.mu_bar(x0, mu, t),
        "sigma_bar(t)": sde.sigma_bar(t),
        "reverse_optimum_step(xt,x0,t)": sde.optimal_prev(xt, x0, mu, t),
        "get_score_from_noise(noise,t)": score,
        "get_real_noise(xt,x0,t)": sde.real_noise(xt, x0, mu, t),
        "get_real_score(xt,x0,t)": sde.real_score(xt, x0, mu, t),
        "drift(xt,t)": sde.drift(xt, mu, t),
        "sde_reverse_drift(xt,score,t)": sde.sde_reverse_drift(xt, mu, score, t),
        "ode_reverse_drift(xt,score,t)": sde.ode_reverse_drift(xt, mu, score, t),
        "reverse_sde_step_mean(xt,score,t)": sde.reverse_sde_step_mean(xt, mu, score, t),
        "reverse_ode_step(xt,score,t)": sde.reverse_ode_step(xt, mu, score, t),
        "weights(t)": sde.weights(t),
        "dispersion(xt,t)|randn=fixed_randn": sde.dispersion(xt, t, randn),
        "reverse_sde_step(xt,score,t)|randn=fixed_randn": sde.reverse_sde_step(xt, mu, score, t, randn),
        "forward_step(xt,t)|randn=fixed_randn": sde.forward_step(xt, mu, t, randn),
        "noise_state(x0)|randn=fixed_randn": sde.start_state(x0, randn),
    }
    if not isinstance(t, torch.Tensor):
        # The structure state sampler of the test-time reverse process: marginal at t - 1.
        out["str.generate_states(x0,mu,t-1)|randn=fixed_randn"] = sde.forward_marginal(x0, mu, t - 1, randn)
    return out


@pytest.mark.parametrize("T_name", ["T100", "T400"])
def test_sde_constants_parity(sde_ref, T_name):
    ref = sde_ref[T_name]["constants"]
    sde = IRSDE(T=ref["T"], max_sigma=30, schedule="cosine", eps=0.005)
    assert sde.lam == pytest.approx(ref["max_sigma"], rel=1e-12)
    for name in ("dt", "thetas", "sigmas", "thetas_cumsum", "sigma_bars"):
        ours, theirs = getattr(sde, name), ref[name]
        assert ours.dtype == torch.float32 and ours.shape == theirs.shape, name
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0, msg=name)


@pytest.mark.parametrize("T_name", ["T100", "T400"])
@pytest.mark.parametrize("t_name", ["t_scalar", "t_tensor"])
def test_sde_functions_parity(sde_ref, T_name, t_name):
    rec = sde_ref[T_name]
    sde = IRSDE(T=rec["constants"]["T"], max_sigma=30, schedule="cosine", eps=0.005)
    ours = _ours(sde, rec["inputs"], rec["inputs"][t_name])
    ref = rec["outputs"][t_name]
    assert set(ours) == set(ref)
    for name, expected in ref.items():
        assert ours[name].shape == expected.shape, name
        torch.testing.assert_close(ours[name], expected, rtol=1e-6, atol=1e-7, msg=name)


def test_sde_timestep_forms_agree(sde_ref):
    """A (B,) tensor, a (B,1,1,1) tensor and per-sample scalars give the same values."""
    rec = sde_ref["T100"]
    sde = IRSDE(T=100)
    inputs = rec["inputs"]
    t4 = inputs["t_tensor"]
    per_sample_4d = _ours(sde, inputs, t4)
    per_sample_1d = _ours(sde, inputs, t4.view(-1))
    for name in per_sample_4d:
        assert torch.equal(per_sample_4d[name], per_sample_1d[name]), name
    for b, t in enumerate(t4.view(-1).tolist()):
        one = {k: v[b:b + 1] for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.dim() == 4}
        for t_form in (t, torch.tensor(t)):
            scalar = _ours(sde, one, t_form)
            for name in per_sample_4d:
                torch.testing.assert_close(scalar[name].expand_as(per_sample_4d[name][b:b + 1]),
                                           per_sample_4d[name][b:b + 1], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("T", [100, 400])
def test_sde_schedule_invariants(T):
    sde = IRSDE(T=T, max_sigma=30, eps=0.005)
    assert sde.thetas.shape == (T + 1,)
    assert sde.thetas_cumsum[0] == 0 and sde.sigma_bars[0] == 0
    # dt is chosen so that only eps of x0 - mu survives at t = T.
    assert float(sde.weights(T)) == pytest.approx(0.005, rel=1e-5)
    assert float(sde.sigma_bar(T)) == pytest.approx(30 / 255 * (1 - 0.005**2) ** 0.5, rel=1e-5)
    assert torch.all(sde.sigma_bars[1:] > sde.sigma_bars[:-1])
    torch.testing.assert_close(sde.sigmas**2, 2 * sde.lam**2 * sde.thetas)
    # The spec's quoted values.
    expected = {100: (0.10409, 50.8994), 400: (0.02622, 202.0767)}[T]
    assert float(sde.dt) == pytest.approx(expected[0], abs=1e-5)
    assert float(sde.thetas_cumsum[T]) == pytest.approx(expected[1], abs=1e-3)


def test_sde_optimal_prev_of_mean_is_previous_mean():
    """x*_{t-1}(x_t = mu_bar_t) = mu_bar_{t-1}: the posterior mean maps the marginal mean back one step."""
    sde = IRSDE(T=100)
    g = torch.Generator().manual_seed(0)
    x0, mu = torch.rand(2, 3, 5, 5, generator=g), torch.rand(2, 3, 5, 5, generator=g)
    for t in (1, 2, 37, 100):
        prev = sde.optimal_prev(sde.mu_bar(x0, mu, t), x0, mu, t)
        # float32 cancellation in 1 - B^2 costs a few 1e-5 at t = 2.
        torch.testing.assert_close(prev, sde.mu_bar(x0, mu, t - 1), rtol=0, atol=1e-4)
    # At t = 1 the optimum is x0 itself, whatever x_t is.
    torch.testing.assert_close(sde.optimal_prev(torch.randn(2, 3, 5, 5, generator=g), x0, mu, 1), x0)
    with pytest.raises(ValueError):
        sde.optimal_prev(x0, x0, mu, 0)


def test_sde_noise_score_round_trip():
    sde = IRSDE(T=100)
    g = torch.Generator().manual_seed(1)
    x0, mu, noise = (torch.rand(2, 1, 4, 4, generator=g) for _ in range(3))
    t = torch.tensor([3, 90])
    xt = sde.forward_marginal(x0, mu, t, noise)
    torch.testing.assert_close(sde.real_noise(xt, x0, mu, t), noise, rtol=0, atol=1e-5)
    torch.testing.assert_close(sde.score_from_noise(noise, t), sde.real_score(xt, x0, mu, t), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sde.noise_from_score(sde.score_from_noise(noise, t), t), noise)
    torch.testing.assert_close(sde.start_state(mu, noise), mu + sde.lam * noise)


def test_sde_other_schedules_and_settings():
    for schedule in ("linear", "constant"):
        sde = IRSDE(T=50, max_sigma=50, schedule=schedule, eps=0.01)
        assert sde.thetas.shape == (51,)
        assert float(sde.weights(50)) == pytest.approx(0.01, rel=1e-5)
        assert sde.settings() == {"T": 50, "max_sigma": 50.0, "schedule": schedule, "eps": 0.01}
        assert IRSDE(**sde.settings()).thetas.equal(sde.thetas)
    assert torch.all(IRSDE(T=10, schedule="constant").thetas == 1)
    with pytest.raises(ValueError, match="schedule"):
        IRSDE(schedule="quadratic")
    with pytest.raises(TypeError):
        IRSDE(T=10).sigma_bar(torch.tensor([1.5]))


def test_sde_to_device_moves_everything():
    # the "meta" device exists everywhere, so a .to() that forgot a tensor fails here without a GPU
    sde = IRSDE(T=10)
    tensors = {k for k, v in vars(sde).items() if isinstance(v, torch.Tensor)}
    assert tensors >= {"thetas", "sigmas", "thetas_cumsum", "sigma_bars", "dt"}
    assert sde.to("meta") is sde and sde.device == torch.device("meta")
    for name in sorted(tensors):
        assert getattr(sde, name).device.type == "meta", name
        assert getattr(sde, name).dtype == torch.float32, name
    assert sde.dt.dim() == 0 and sde.thetas.shape == (11,)


def test_randn_like_per_sample_is_per_image():
    x = torch.zeros(3, 2, 4, 4)
    noise = randn_like_per_sample(x, [torch.Generator().manual_seed(s) for s in (10, 11, 12)])
    assert noise.shape == x.shape and noise.dtype == x.dtype
    # Image 1's noise does not depend on the batch it is in.
    alone = randn_like_per_sample(x[1:2], [torch.Generator().manual_seed(11)])
    assert torch.equal(alone[0], noise[1])
    assert torch.equal(noise[0], torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(10)))
    assert not torch.equal(noise[0], noise[2])
    # Generators advance: a second draw differs.
    gens = [torch.Generator().manual_seed(5)]
    assert not torch.equal(randn_like_per_sample(x[:1], gens), randn_like_per_sample(x[:1], gens))
    with pytest.raises(ValueError, match="one generator per sample"):
        randn_like_per_sample(x, gens)
