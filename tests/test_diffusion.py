"""The diffusion module over actions: schedules, forward noising, reverse chain, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dql.diffusion import BETA_SCHEDULES, Diffusion, beta_schedule
from dql.diffusion_ql import Denoiser
from dql.nets import Mish


def expected_alphas_cumprod(schedule: str, T: int) -> np.ndarray:
    """abar_i written from each schedule's definition, not from the module's cumprod."""
    i = np.arange(1, T + 1, dtype=np.float64)
    if schedule == "vp":  # prod_j exp(-b_min/T - (b_max-b_min)(2j-1)/(2T^2)) = VP-SDE marginal
        return np.exp(-0.1 * i / T - 0.5 * (10.0 - 0.1) * i**2 / T**2)
    if schedule == "linear":
        return np.cumprod(1 - np.linspace(1e-4, 2e-2, T))
    f = (
        np.cos((i / T + 0.008) / 1.008 * math.pi / 2) ** 2
        / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    )
    f[-1] = (f[-2] if T > 1 else 1.0) * (1 - 0.999)  # the last beta (= 1) is clipped to 0.999
    return f


class OracleDenoiser(nn.Module):
    """A perfect eps-predictor for one known x0: eps = (x_t - sqrt(abar_t) x0) / sqrt(1-abar_t)."""

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.x0 = x0
        self.diffusion: Diffusion | None = None

    def forward(self, x: torch.Tensor, t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        d = self.diffusion
        signal = d.sqrt_alphas_cumprod[t].expand(x.shape[0])[:, None]
        noise = d.sqrt_one_minus_alphas_cumprod[t].expand(x.shape[0])[:, None]
        return (x - signal * self.x0) / noise


class ZeroDenoiser(nn.Module):
    def forward(self, x: torch.Tensor, t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


@pytest.mark.parametrize("schedule", BETA_SCHEDULES)
@pytest.mark.parametrize("T", [1, 5, 50])
def test_forward_noising_matches_closed_form(schedule: str, T: int) -> None:
    torch.manual_seed(0)
    diffusion = Diffusion(
        nn.Identity(), action_dim=3, max_action=1.0, num_steps=T, schedule=schedule
    )
    abar = expected_alphas_cumprod(schedule, T)
    np.testing.assert_allclose(diffusion.alphas_cumprod.numpy(), abar, rtol=1e-5, atol=1e-7)
    assert np.all(np.diff(abar) < 0) and 0 < abar[-1] <= abar[0] < 1  # noise grows with i
    x0, eps = torch.rand(64, 3) * 2 - 1, torch.randn(64, 3)
    t = torch.randint(0, T, (64,))
    abar_t = torch.as_tensor(abar)[t, None]  # float64
    expected = abar_t.sqrt() * x0.double() + (1 - abar_t).sqrt() * eps.double()
    torch.testing.assert_close(diffusion.q_sample(x0, t, eps).double(), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("T", [1, 5, 30, 200])
def test_vp_schedule_discretises_the_vp_sde(T: int) -> None:
    # the VP SDE with beta(t) = 0.1 + 9.9 t on [0, 1]: alpha_bar at the end of the chain is
    # exp(-integral beta) = exp(-5.05) for every T, and the noise grows along the chain
    betas = beta_schedule("vp", T)
    np.testing.assert_allclose(np.prod(1 - betas), np.exp(-(0.1 + 9.9 / 2)), rtol=1e-6)
    assert np.all(np.diff(betas) > 0) and 0 < betas[0] <= betas[-1] < 1
    # each step removes the SDE's signal over its own interval [(i-1)/T, i/T]
    edges = np.arange(T + 1) / T
    per_step = 0.1 * np.diff(edges) + 9.9 / 2 * np.diff(edges**2)
    np.testing.assert_allclose(-np.log(1 - betas), per_step, rtol=1e-6)


def test_unknown_or_empty_schedules_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown beta schedule"):
        beta_schedule("quadratic", 5)
    with pytest.raises(ValueError, match=">= 1"):
        beta_schedule("vp", 0)


@pytest.mark.parametrize("schedule", BETA_SCHEDULES)
@pytest.mark.parametrize("T", [1, 5, 30])
def test_reverse_chain_with_a_perfect_denoiser_returns_the_data_point(
    schedule: str, T: int
) -> None:
    torch.manual_seed(1)
    x0 = torch.rand(32, 2) * 1.6 - 0.8
    oracle = OracleDenoiser(x0)
    diffusion = Diffusion(oracle, action_dim=2, max_action=1.0, num_steps=T, schedule=schedule)
    oracle.diffusion = diffusion
    sampled = diffusion.sample(torch.zeros(32, 5))
    torch.testing.assert_close(sampled, x0, rtol=0, atol=1e-5)
    # ...and its denoising loss is zero, the same identity seen from the forward side
    assert diffusion.loss(x0, torch.zeros(32, 5)).item() < 1e-8

    # a denoiser that predicts no noise does not recover x0 (the check above can fail)
    diffusion.denoiser = ZeroDenoiser()
    assert (diffusion.sample(torch.zeros(32, 5)) - x0).abs().max() > 0.1


def make_actor(T: int = 5, max_action: float = 1.0, schedule: str = "vp") -> Diffusion:
    return Diffusion(Denoiser(4, 2, hidden=(32, 32, 32)), 2, max_action, T, schedule)


def test_gradients_reach_every_denoiser_layer_through_the_sampling_chain() -> None:
    torch.manual_seed(0)
    actor = make_actor()
    state = torch.randn(64, 4)
    # A Q-like objective on the sampled action only (no denoising loss involved).
    actor.sample(state).sum().backward()
    for name, param in actor.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_every_reverse_step_is_on_the_gradient_path() -> None:
    torch.manual_seed(0)
    actor = make_actor(T=5, max_action=100.0)  # a wide box: no clipping blocks a step
    outputs: list[torch.Tensor] = []

    def keep(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        output.retain_grad()
        outputs.append(output)

    actor.denoiser.register_forward_hook(keep)
    actor.sample(torch.randn(16, 4)).square().sum().backward()
    assert len(outputs) == 5
    assert all(out.grad is not None and out.grad.abs().sum() > 0 for out in outputs)


def test_sampling_without_grad_is_detached_seeded_and_inside_the_box() -> None:
    actor = make_actor(max_action=0.5)
    state = torch.randn(100, 4)
    with torch.no_grad():
        torch.manual_seed(3)
        first = actor.sample(state)
        torch.manual_seed(3)
        second = actor.sample(state)
    assert not first.requires_grad and first.shape == (100, 2)
    assert torch.equal(first, second)
    assert first.abs().max() <= 0.5


def test_denoising_loss_trains_toward_the_data() -> None:
    """A few hundred steps on a single action make samples land near it."""
    torch.manual_seed(0)
    actor = make_actor(T=5)
    optimizer = torch.optim.Adam(actor.parameters(), lr=3e-3)
    target, state = torch.tensor([[0.5, -0.3]]).expand(128, 2), torch.zeros(128, 4)
    with torch.no_grad():
        before = (actor.sample(state) - target).norm(dim=1).mean()
    for _ in range(300):
        loss = actor.loss(target, state)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = (actor.sample(state) - target).norm(dim=1).mean()
    assert after < 0.1 < before


def test_fast_mish_matches_torch_mish_in_values_and_gradients() -> None:
    x = torch.cat([torch.linspace(-60, 60, 4001), torch.randn(4000) * 4]).requires_grad_()
    mine, theirs = Mish()(x), F.mish(x)
    (grad_mine,) = torch.autograd.grad(mine.sum(), x)
    (grad_theirs,) = torch.autograd.grad(theirs.sum(), x)
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(grad_mine, grad_theirs, rtol=1e-5, atol=5e-6)
    with torch.no_grad():
        torch.testing.assert_close(Mish()(x), F.mish(x), rtol=1e-5, atol=2e-6)
