"""Sampler mathematics: a perfect predictor returns x0 for every sampler and step count; schedules
against their closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from reference_samplers import ddim_reference, flow_reference, spaced_timesteps

from medvae_engine.sr.objectives import (
    diffuse,
    diffusion_target,
    flow_interpolate,
    flow_target,
    to_x0_eps,
)
from medvae_engine.sr.samplers import diffusers_scheduler, run_sampler, sample_steps
from medvae_engine.sr.schedules import cosine_schedule, latent_sr_table

torch.set_num_threads(1)
SHAPE = (2, 3, 8, 8)


def perfect_predictor(x0: torch.Tensor, objective: str, schedule, calls: list):
    """The exact model output for ``objective`` given the true clean latent ``x0``."""

    def predict(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(float(t))
        if objective == "flow":
            t = float(t)
            noise = (z - t * x0) / (1 - t)
            return flow_target(x0, noise)
        ab = schedule.at(t).float()
        noise = (z - ab.sqrt() * x0) / (1 - ab).sqrt()
        return diffusion_target(objective, x0, noise, ab)

    return predict


CASES = [("ddpm", "x0", 0.0), ("ddpm", "epsilon", 0.0), ("ddpm", "v", 0.0),
         ("ddim", "x0", 0.0), ("ddim", "epsilon", 0.0), ("ddim", "v", 0.0),
         ("ddim", "x0", 1.0), ("ddim", "v", 0.5),
         ("flow", "flow", 0.0), ("latent-sr", "x0", 0.0), ("latent-sr", "v", 0.0)]


@pytest.mark.parametrize("sampler,objective,eta", CASES)
@pytest.mark.parametrize("steps", [1, 2, 7, 50, 1000])
def test_perfect_predictor_returns_x0(sampler, objective, eta, steps):
    schedule = cosine_schedule()
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)).clamp(-2, 2)
    calls: list = []
    out = run_sampler(sample_steps(sampler, perfect_predictor(x0, objective, schedule, calls),
                                   SHAPE, schedule, objective, steps,
                                   torch.Generator().manual_seed(2), eta=eta))
    assert len(calls) == steps
    assert out.shape == SHAPE
    # one epsilon step from pure noise divides the float32 output by sqrt(ab_999) ~ 5e-5
    tol = 5e-3 if (objective, steps) == ("epsilon", 1) else 1e-4
    assert torch.allclose(out, x0, atol=tol), float((out - x0).abs().max())


def test_non_perfect_predictor_does_not_return_x0():
    """The test above can fail: a predictor that is off by 0.1 is not rescued by the sampler."""
    schedule = cosine_schedule()
    x0 = torch.zeros(SHAPE)
    out = run_sampler(sample_steps("ddim", lambda z, t: x0 + 0.1, SHAPE, schedule, "x0", 10,
                                   torch.Generator().manual_seed(0)))
    assert torch.allclose(out, x0 + 0.1, atol=1e-5)


def test_seeded_and_stochastic():
    schedule = cosine_schedule()

    def model(z, t):
        return 0.5 * z

    def go(sampler, seed, eta=0.0):
        return run_sampler(sample_steps(sampler, model, SHAPE, schedule, "x0", 5,
                                        torch.Generator().manual_seed(seed), eta=eta))

    for sampler in ("ddpm", "ddim", "latent-sr"):
        assert torch.equal(go(sampler, 3), go(sampler, 3))
        assert not torch.equal(go(sampler, 3), go(sampler, 4))
    # per-item generators: an item's result does not depend on its batch neighbours
    gens = [torch.Generator().manual_seed(k) for k in (5, 6)]
    both = run_sampler(sample_steps("ddpm", model, SHAPE, schedule, "x0", 4, gens))
    alone = run_sampler(sample_steps("ddpm", model, (1, *SHAPE[1:]), schedule, "x0", 4,
                                     [torch.Generator().manual_seed(6)]))
    assert torch.allclose(both[1:], alone, atol=1e-6)


def test_cosine_schedule_closed_form():
    s, T = 0.008, 1000
    sched = cosine_schedule(T, s)
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 1, 10, 500, 900, 990):
        assert sched.alphas_cumprod[t].item() == pytest.approx(f((t + 1) / T) / f(0), rel=1e-9)
    assert sched.betas.max().item() == pytest.approx(0.999)
    assert sched.betas[0].item() == pytest.approx(1 - f(1 / T) / f(0), rel=1e-9)
    assert bool((sched.alphas_cumprod[1:] < sched.alphas_cumprod[:-1]).all())
    assert sched.at(-1).item() == 1.0


def test_latent_sr_table_is_flipped_and_uncapped():
    T, s = 1000, 0.008
    table = latent_sr_table(T, s)
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    assert table.dtype == torch.float32
    assert table[0].item() == pytest.approx(0.0, abs=1e-7)  # pure noise first
    assert table[-1].item() == pytest.approx(f(1 / T) / f(0), rel=1e-6)
    for i in (3, 100, 600):
        assert table[i].item() == pytest.approx(f((T - i) / T) / f(0), rel=1e-5)
    sched = cosine_schedule(T, s)
    # apart from the 0.999 beta cap near pure noise, entry i is our timestep T-1-i
    assert torch.allclose(table[50:].double(), sched.alphas_cumprod.flip(0)[50:], rtol=1e-5)


def test_diffusers_trailing_timesteps():
    for sampler in ("ddim", "ddpm"):
        assert diffusers_scheduler(sampler, cosine_schedule(), "x0", 1000).timesteps.tolist() == \
            list(range(999, -1, -1))
        assert diffusers_scheduler(sampler, cosine_schedule(), "x0", 4).timesteps.tolist() == \
            [999, 749, 499, 249]
    with pytest.raises(ValueError):
        diffusers_scheduler("ddim", cosine_schedule(), "x0", 0)


def test_diffusers_cosine_matches_our_schedule():
    """diffusers' own squaredcos_cap_v2 betas (independent code) give our cumulative levels."""
    from diffusers import DDPMScheduler

    theirs = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    assert torch.allclose(theirs.alphas_cumprod.double(), cosine_schedule().alphas_cumprod,
                          rtol=1e-4, atol=1e-7)


def recording(model, seen: list):
    """The model, recording every (state, time) it is called with: the sampler's trajectory."""

    def predict(z, t):
        seen.append((z.clone(), float(t)))
        return model(z, t)

    return predict


def toy_model(z, t):
    """A smooth, non-perfect predictor (the trajectory then depends on every update)."""
    return 0.6 * torch.tanh(z) + 0.1 * float(t) / 1000


@pytest.mark.parametrize("sampler,objective,eta,steps", [
    ("ddim", "x0", 0.0, 50), ("ddim", "epsilon", 0.0, 20), ("ddim", "v", 0.0, 10),
    ("ddim", "x0", 0.7, 25), ("ddpm", "x0", 1.0, 1000), ("ddpm", "v", 1.0, 100),
    ("ddpm", "epsilon", 1.0, 7)])
def test_diffusers_samplers_equal_reference_step_for_step(sampler, objective, eta, steps):
    """Our paper-written DDIM/DDPM (tests/sr/reference_samplers.py) and the package's sampling
    through diffusers visit the same states at the same timesteps and end at the same latent."""
    schedule = cosine_schedule()
    ours, theirs = [], []
    out = run_sampler(sample_steps(sampler, recording(toy_model, theirs), SHAPE, schedule,
                                   objective, steps, torch.Generator().manual_seed(4), eta=eta))
    ref = ddim_reference(recording(toy_model, ours), SHAPE, schedule, objective, steps,
                         torch.Generator().manual_seed(4), eta=eta)
    assert [t for _, t in ours] == [t for _, t in theirs]
    for (a, _), (b, _) in zip(ours, theirs):
        assert torch.allclose(a, b, atol=2e-3, rtol=1e-3), float((a - b).abs().max())
    assert torch.allclose(out, ref, atol=2e-3, rtol=1e-3)


def test_diffusers_flow_equals_reference_euler():
    ours, theirs = [], []

    def velocity(z, t):
        return 0.5 - 0.8 * z

    out = run_sampler(sample_steps("flow", recording(velocity, theirs), SHAPE, cosine_schedule(),
                                   "flow", 9, torch.Generator().manual_seed(2)))
    ref = flow_reference(recording(velocity, ours), SHAPE, 9, torch.Generator().manual_seed(2))
    assert [t for _, t in ours] == [t for _, t in theirs]
    for (a, _), (b, _) in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(out, ref, atol=1e-5)
    assert spaced_timesteps(4, 1000).tolist() == [999, 749, 499, 249]


def test_latent_sr_sampler_walks_only_the_first_entries():
    schedule = cosine_schedule()
    calls: list = []
    x0 = torch.zeros(SHAPE)
    run_sampler(sample_steps("latent-sr", perfect_predictor(x0, "x0", schedule, calls), SHAPE,
                             schedule, "x0", 5, torch.Generator().manual_seed(0)))
    assert calls == [999, 998, 997, 996, 995]  # table entries 0..4, never the clean end


def test_latent_sr_init_is_half_std():
    seen = []

    def model(z, t):
        seen.append(z.clone())
        return torch.zeros_like(z)

    run_sampler(sample_steps("latent-sr", model, (4, 4, 32, 32), cosine_schedule(), "x0", 1,
                             torch.Generator().manual_seed(0)))
    assert seen[0].std().item() == pytest.approx(0.5, rel=0.05)


def test_objective_conversions_round_trip():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    ab = torch.tensor([0.3, 0.8])
    z = diffuse(x0, noise, ab)
    for objective in ("x0", "epsilon", "v"):
        x, e = to_x0_eps(objective, diffusion_target(objective, x0, noise, ab), z, ab)
        assert torch.allclose(x, x0, atol=1e-5) and torch.allclose(e, noise, atol=1e-5)
    zt = flow_interpolate(x0, noise, torch.tensor([0.0, 1.0]))
    assert torch.equal(zt[0], noise[0]) and torch.equal(zt[1], x0[1])
