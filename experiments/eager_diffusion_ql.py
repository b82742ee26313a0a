"""Diffusion-QL's training step and action selection written the obvious way, as the authors'
public code is (plain nn.Linear layers, one Python loop per reverse step, no compile): the
bench's eager reference for Diffusion-QL (experiments/bench.py). The maths is that of
dql.diffusion_ql at its defaults; the bench times both on the same data."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HIDDEN = 256


class _SinusoidalPosEmb(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        scale = math.log(10000) / (half - 1)
        freqs = torch.exp(torch.arange(half, device=x.device) * -scale)
        angles = x[:, None] * freqs[None, :]
        return torch.cat((angles.sin(), angles.cos()), dim=-1)


class _EagerDenoiser(nn.Module):
    def __init__(self, state_dim: int, action_dim: int, hidden: int = HIDDEN, t_dim: int = 16):
        super().__init__()
        self.time_mlp = nn.Sequential(
            _SinusoidalPosEmb(t_dim),
            nn.Linear(t_dim, t_dim * 2),
            nn.Mish(),
            nn.Linear(t_dim * 2, t_dim),
        )
        self.mid_layer = nn.Sequential(
            nn.Linear(state_dim + action_dim + t_dim, hidden),
            nn.Mish(),
            nn.Linear(hidden, hidden),
            nn.Mish(),
            nn.Linear(hidden, hidden),
            nn.Mish(),
        )
        self.final_layer = nn.Linear(hidden, action_dim)

    def forward(self, x: torch.Tensor, time: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        t = self.time_mlp(time)
        return self.final_layer(self.mid_layer(torch.cat([x, t, state], dim=1)))


def _extract(a: torch.Tensor, t: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
    return a.gather(-1, t).reshape(t.shape[0], *((1,) * (len(x_shape) - 1)))


class _EagerDiffusion(nn.Module):
    """DDPM over actions, VP schedule, epsilon prediction, x0 clipped at every reverse step."""

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        max_action: float,
        n_timesteps: int = 5,
        hidden: int = HIDDEN,
    ) -> None:
        super().__init__()
        self.model = _EagerDenoiser(state_dim, action_dim, hidden)
        self.action_dim, self.max_action, self.n_timesteps = action_dim, max_action, n_timesteps
        i = np.arange(1, n_timesteps + 1)
        alphas_np = np.exp(-0.1 / n_timesteps - 0.5 * 9.9 * (2 * i - 1) / n_timesteps**2)
        betas = torch.tensor(1 - alphas_np, dtype=torch.float32)
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, 0)
        abar_prev = torch.cat([torch.ones(1), abar[:-1]])
        variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        self.register_buffer("sqrt_abar", abar.sqrt())
        self.register_buffer("sqrt_one_minus_abar", (1.0 - abar).sqrt())
        self.register_buffer("sqrt_recip_abar", (1.0 / abar).sqrt())
        self.register_buffer("sqrt_recipm1_abar", (1.0 / abar - 1).sqrt())
        self.register_buffer("log_variance", torch.log(variance.clamp(min=1e-20)))
        self.register_buffer("coef1", betas * abar_prev.sqrt() / (1.0 - abar))
        self.register_buffer("coef2", (1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar))

    def p_sample(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        eps = self.model(x, t, s)
        x_recon = _extract(self.sqrt_recip_abar, t, x.shape) * x
        x_recon = x_recon - _extract(self.sqrt_recipm1_abar, t, x.shape) * eps
        x_recon.clamp_(-self.max_action, self.max_action)
        mean = _extract(self.coef1, t, x.shape) * x_recon + _extract(self.coef2, t, x.shape) * x
        noise = torch.randn_like(x)
        nonzero = (1 - (t == 0).float()).reshape(x.shape[0], 1)
        return mean + nonzero * (0.5 * _extract(self.log_variance, t, x.shape)).exp() * noise

    def sample(self, state: torch.Tensor) -> torch.Tensor:
        x = torch.randn(state.shape[0], self.action_dim, device=state.device)
        for i in reversed(range(self.n_timesteps)):
            t = torch.full((state.shape[0],), i, device=state.device, dtype=torch.long)
            x = self.p_sample(x, t, state)
        return x.clamp_(-self.max_action, self.max_action)

    def loss(self, x_start: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        t = torch.randint(0, self.n_timesteps, (len(x_start),), device=x_start.device)
        noise = torch.randn_like(x_start)
        x_noisy = _extract(self.sqrt_abar, t, x_start.shape) * x_start
        x_noisy = x_noisy + _extract(self.sqrt_one_minus_abar, t, x_start.shape) * noise
        return F.mse_loss(self.model(x_noisy, t, state), noise)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.sample(state)


class _EagerCritic(nn.Module):
    def __init__(self, state_dim: int, action_dim: int, hidden: int = HIDDEN) -> None:
        super().__init__()

        def q() -> nn.Sequential:
            return nn.Sequential(
                nn.Linear(state_dim + action_dim, hidden),
                nn.Mish(),
                nn.Linear(hidden, hidden),
                nn.Mish(),
                nn.Linear(hidden, hidden),
                nn.Mish(),
                nn.Linear(hidden, 1),
            )

        self.q1_model, self.q2_model = q(), q()

    def forward(self, state: torch.Tensor, action: torch.Tensor):
        x = torch.cat([state, action], dim=-1)
        return self.q1_model(x), self.q2_model(x)

    def q_min(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        q1, q2 = self(state, action)
        return torch.min(q1, q2)


class EagerDiffusionQL:
    """Diffusion-QL's training step and action selection written the obvious way, as the
    published code is; the maths is that of dql.diffusion_ql with its defaults (grad-norm 5,
    EMA copied before step 1000 and updated every 5 steps, constant learning rates: the public
    code's cosine schedule is stepped once per 50 epochs, in effect constant)."""

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        max_action: float = 1.0,
        device: str = "cpu",
        hidden: int = HIDDEN,
    ) -> None:
        self.device = device
        self.actor = _EagerDiffusion(state_dim, action_dim, max_action, hidden=hidden).to(device)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=3e-4)
        self.ema_model = copy.deepcopy(self.actor)
        self.critic = _EagerCritic(state_dim, action_dim, hidden).to(device)
        self.critic_target = copy.deepcopy(self.critic)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=3e-4)
        self.step = 0

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        state, action = batch["observations"], batch["actions"]
        next_state, reward = batch["next_observations"], batch["rewards"][:, None]
        not_done = 1.0 - batch["terminals"][:, None]
        # Q training
        current_q1, current_q2 = self.critic(state, action)
        next_action = self.ema_model(next_state)
        target_q1, target_q2 = self.critic_target(next_state, next_action)
        target_q = (reward + not_done * 0.99 * torch.min(target_q1, target_q2)).detach()
        critic_loss = F.mse_loss(current_q1, target_q) + F.mse_loss(current_q2, target_q)
        self.critic_optimizer.zero_grad()
        critic_loss.backward()
        nn.utils.clip_grad_norm_(self.critic.parameters(), max_norm=5.0, norm_type=2)
        self.critic_optimizer.step()
        # policy training
        bc_loss = self.actor.loss(action, state)
        new_action = self.actor(state)
        q1_new_action, q2_new_action = self.critic(state, new_action)
        if np.random.uniform() > 0.5:
            q_loss = -q1_new_action.mean() / q2_new_action.abs().mean().detach()
        else:
            q_loss = -q2_new_action.mean() / q1_new_action.abs().mean().detach()
        actor_loss = bc_loss + 1.0 * q_loss
        self.actor_optimizer.zero_grad()
        actor_loss.backward()
        nn.utils.clip_grad_norm_(self.actor.parameters(), max_norm=5.0, norm_type=2)
        self.actor_optimizer.step()
        # target networks
        self.step += 1
        if self.step % 5 == 0:
            for param, ema_param in zip(self.actor.parameters(), self.ema_model.parameters()):
                if self.step < 1000:
                    ema_param.data.copy_(param.data)
                else:
                    ema_param.data = ema_param.data * 0.995 + (1 - 0.995) * param.data
        for param, target_param in zip(self.critic.parameters(), self.critic_target.parameters()):
            target_param.data.copy_(0.005 * param.data + (1 - 0.005) * target_param.data)
        return {
            "actor_loss": actor_loss.item(),
            "bc_loss": bc_loss.item(),
            "ql_loss": q_loss.item(),
            "critic_loss": critic_loss.item(),
        }

    def act(self, observations: np.ndarray) -> np.ndarray:
        """50 candidates per state, softmax over the target critics' min-Q."""
        state = torch.as_tensor(np.asarray(observations, np.float32), device=self.device)
        state_rpt = torch.repeat_interleave(state, repeats=50, dim=0)
        with torch.no_grad():
            action = self.actor.sample(state_rpt)
            q_value = self.critic_target.q_min(state_rpt, action).view(-1, 50)
            idx = torch.multinomial(F.softmax(q_value, dim=-1), 1)
        picked = action.view(-1, 50, action.shape[-1])[torch.arange(len(state)), idx[:, 0]]
        return picked.cpu().numpy()
