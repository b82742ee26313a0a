"""A conditional DDPM over actions (Ho et al. 2020), as Diffusion-QL uses it (Wang et al. 2023).

The denoiser eps_theta(x_i, i, s) is passed in; this module owns the noise schedule, the
forward process, the denoising loss and the reverse chain:

    q(x_i | x_0)   = N(sqrt(abar_i) x_0, (1 - abar_i) I)
    L_bc           = E_{i, eps} || eps - eps_theta(sqrt(abar_i) x_0 + sqrt(1 - abar_i) eps, i, s) ||^2
    x0_hat         = clip((x_i - sqrt(1 - abar_i) eps_theta) / sqrt(abar_i), -max_action, max_action)
    x_{i-1}        = c1_i x0_hat + c2_i x_i + sigma_i z,   z ~ N(0, I), sigma_0 = 0

with the posterior q(x_{i-1} | x_i, x_0) coefficients c1, c2, sigma. Step indices are 0-based
in code (i = 0..T-1 stands for the paper's 1..T). Sampling is an ordinary differentiable
computation: call it under `torch.no_grad()` when no gradient is wanted; otherwise gradients
flow through every reverse step (Diffusion-QL's Q term needs that).

Rows are the second-to-last dimension: x_0 (B, A) with states (B, obs), or with leading
dimensions, e.g. (S, B, A) for S seeds trained as one model (dql.diffusion_ql); the loss is then
one mean per leading index. Hot-loop notes: every schedule constant is a precomputed buffer, the
reverse loop runs T batched denoiser calls with one shared time index (no per-sample Python, no
host syncs), and all noise comes from torch's RNG unless passed in (`t`, `noise`), so a seeded
run is reproducible and a caller can draw the noise itself (per seed, outside a compiled graph).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import numpy as np
import torch
from torch import nn

BetaSchedule = Literal["linear", "cosine", "vp"]
BETA_SCHEDULES = get_args(BetaSchedule)


def linear_beta_schedule(
    num_steps: int, beta_start: float = 1e-4, beta_end: float = 2e-2
) -> np.ndarray:
    """DDPM's linear betas (Ho et al. 2020), float64."""
    return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)


def cosine_beta_schedule(num_steps: int, s: float = 0.008) -> np.ndarray:
    """Improved-DDPM cosine schedule (Nichol & Dhariwal 2021), betas clipped at 0.999."""
    x = np.linspace(0, num_steps, num_steps + 1, dtype=np.float64)
    alphas_cumprod = np.cos(((x / num_steps) + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    return np.clip(1 - alphas_cumprod[1:] / alphas_cumprod[:-1], 0, 0.999)


def vp_beta_schedule(num_steps: int, beta_min: float = 0.1, beta_max: float = 10.0) -> np.ndarray:
    """Discretised variance-preserving SDE (Song et al. 2021), Diffusion-QL's default:
    alpha_i = exp(-beta_min / T - 0.5 (beta_max - beta_min) (2i - 1) / T^2), i = 1..T."""
    i = np.arange(1, num_steps + 1, dtype=np.float64)
    T = num_steps
    alphas = np.exp(-beta_min / T - 0.5 * (beta_max - beta_min) * (2 * i - 1) / T**2)
    return 1 - alphas


def beta_schedule(name: str, num_steps: int) -> np.ndarray:
    """Betas of schedule `name` (linear, cosine, vp) for `num_steps` diffusion steps."""
    schedules = {
        "linear": linear_beta_schedule,
        "cosine": cosine_beta_schedule,
        "vp": vp_beta_schedule,
    }
    if name not in schedules:
        raise ValueError(
            f"unknown beta schedule {name!r}; choose one of {', '.join(BETA_SCHEDULES)}"
        )
    if num_steps < 1:
        raise ValueError(f"the number of diffusion steps must be >= 1, got {num_steps}")
    return schedules[name](num_steps)


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style sinusoidal embedding of (float) time indices: (...) -> (..., dim)."""
    half = dim // 2
    scale = math.log(10000) / (half - 1)
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -scale)
    angles = t.float()[..., None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class Diffusion(nn.Module):
    """pi(a | s) as a DDPM with epsilon prediction.

    `denoiser(x_t, t, state) -> eps_hat` takes x_t (..., B, action_dim), integer steps t and
    states (..., B, obs_dim). t is (..., B) in the loss; in the reverse chain every row shares
    the step, and t is passed as shape (1,) so a denoiser may embed it once and broadcast.
    """

    def __init__(
        self,
        denoiser: nn.Module,
        action_dim: int,
        max_action: float,
        num_steps: int = 5,
        schedule: str = "vp",
        clip_denoised: bool = True,
    ) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.action_dim = action_dim
        self.max_action = float(max_action)
        self.num_steps = num_steps
        self.clip_denoised = clip_denoised

        betas = beta_schedule(schedule, num_steps)
        alphas = 1.0 - betas
        abar = np.cumprod(alphas)
        abar_prev = np.concatenate([[1.0], abar[:-1]])
        posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)

        def buffer(name: str, values: np.ndarray) -> None:
            self.register_buffer(name, torch.as_tensor(values, dtype=torch.float32))

        buffer("betas", betas)
        buffer("alphas_cumprod", abar)
        buffer("sqrt_alphas_cumprod", np.sqrt(abar))
        buffer("sqrt_one_minus_alphas_cumprod", np.sqrt(1.0 - abar))
        # x0_hat = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps_hat
        buffer("sqrt_recip_alphas_cumprod", np.sqrt(1.0 / abar))
        buffer("sqrt_recipm1_alphas_cumprod", np.sqrt(1.0 / abar - 1.0))
        # posterior mean = c1 x0 + c2 x_t; c1_0 = 1, c2_0 = 0 so the last step returns x0_hat
        buffer("posterior_mean_coef1", betas * np.sqrt(abar_prev) / (1.0 - abar))
        buffer("posterior_mean_coef2", (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar))
        buffer("posterior_std", np.sqrt(posterior_variance))  # exactly 0 at the last step
        self.register_buffer("timesteps", torch.arange(num_steps), persistent=False)

    # ------------------------------------------------------------------ forward process

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, per-row steps t: x0.shape[:-1]."""
        return (
            self.sqrt_alphas_cumprod[t, None] * x0
            + self.sqrt_one_minus_alphas_cumprod[t, None] * noise
        )

    def loss(
        self,
        x0: torch.Tensor,
        state: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """L_bc: mean squared error of the predicted noise, t uniform over the T steps. x0
        (B, A) gives a scalar, x0 (..., B, A) one mean per leading index. `t` (x0.shape[:-1])
        and `noise` (like x0) fix the draws."""
        if t is None:
            t = torch.randint(0, self.num_steps, x0.shape[:-1], device=x0.device)
        if noise is None:
            noise = torch.randn_like(x0)
        _, predicted = self._predict_noise(x0, state, t, noise)
        return (predicted - noise).square().mean(dim=(-2, -1))

    def _predict_noise(
        self, x0: torch.Tensor, state: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t = q_sample(x0, t, noise) and the denoiser's eps_hat for it."""
        x_t = self.q_sample(x0, t, noise)
        return x_t, self.denoiser(x_t, t, state)

    def loss_and_reconstruction(
        self, x0: torch.Tensor, state: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """L_bc as `loss`, and from the same denoiser pass EDP's one-step reconstruction of
        the action (Kang et al. 2023): x0_hat = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps_hat,
        clipped to the action box; differentiable w.r.t. the denoiser."""
        x_t, predicted = self._predict_noise(x0, state, t, noise)
        loss = (predicted - noise).square().mean(dim=(-2, -1))
        x0_hat = (
            self.sqrt_recip_alphas_cumprod[t, None] * x_t
            - self.sqrt_recipm1_alphas_cumprod[t, None] * predicted
        )
        return loss, x0_hat.clamp(-self.max_action, self.max_action)

    # ------------------------------------------------------------------ reverse process

    def predict_x0(self, x_t: torch.Tensor, i: int, eps: torch.Tensor) -> torch.Tensor:
        x0 = self.sqrt_recip_alphas_cumprod[i] * x_t - self.sqrt_recipm1_alphas_cumprod[i] * eps
        if self.clip_denoised:
            x0 = x0.clamp(-self.max_action, self.max_action)
        return x0

    def sample(self, state: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """a_0 ~ pi(. | s) for each row of `state` (..., B, obs_dim) -> (..., B, action_dim).

        Differentiable w.r.t. the denoiser through all T steps unless run under no_grad.
        `noise` (T, ..., B, action_dim) fixes the draws: noise[0] is x_T and noise[j] the z
        added by the j-th of the T reverse steps (j = 1..T-1; the last one adds none)."""
        if noise is None:
            shape = (self.num_steps, *state.shape[:-1], self.action_dim)
            noise = torch.randn(shape, device=state.device, dtype=state.dtype)
        x = noise[0]
        for j, i in enumerate(reversed(range(self.num_steps))):
            eps = self.denoiser(x, self.timesteps[i : i + 1], state)
            x0 = self.predict_x0(x, i, eps)
            x = self.posterior_mean_coef1[i] * x0 + self.posterior_mean_coef2[i] * x
            if i > 0:
                x = x + self.posterior_std[i] * noise[j + 1]
        return x.clamp(-self.max_action, self.max_action)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.sample(state)
