"""Diffusion-QL: "Diffusion Policies as an Expressive Policy Class for Offline Reinforcement
Learning" (Wang, Hunt, Zhou, ICLR 2023). Public code: github.com/Zhendong-Wang/Diffusion-Policies-for-Offline-RL.

The policy pi_theta(a | s) is a conditional DDPM over actions (`dql.diffusion.Diffusion`, T = 5
steps, VP schedule, epsilon prediction, predicted a_0 clipped to the action box at every step).
It is trained by behaviour cloning plus Q-learning:

    L_actor(theta) = L_bc + eta * L_q
    L_bc   = E_{(s,a) ~ D, i, eps} || eps - eps_theta(sqrt(abar_i) a + sqrt(1 - abar_i) eps, i, s) ||^2
    L_q    = - mean_s Q_k(s, a_0) / mean_s |Q_j(s, a_0)|.detach(),   a_0 ~ pi_theta(. | s)

where a_0 is sampled through the whole reverse chain with gradients, and (k, j) is (1, 2) or
(2, 1) with probability 1/2 each (as the public code does: the critic that is maximised is not
the one that sets the scale). Twin critics Q_1, Q_2 minimise

    L_critic = sum_k E (Q_k(s, a) - y)^2,   y = r + gamma (1 - terminal) min_k Q'_k(s', a'),
    a' ~ pi_ema(. | s')   (max_q_backup: max over `num_backup_actions` a' per critic, then min)

with Polyak-averaged target critics Q' (tau) and an EMA copy of the actor (pi_ema). The critic
is updated first, then the actor against the freshly updated critic (public code's order).

Deliberate choices and deviations (see also the field docstrings):
- EMA warm-up: before `step_start_ema` the public code leaves the EMA actor at its random
  initialisation, so the first 1000 target actions come from an untrained network. Here the
  EMA actor is a copy of the actor until then (the usual DDPM/Diffuser convention).
- lr schedule: the public code's CosineAnnealingLR has T_max = number of epochs but is stepped
  once per 50-epoch evaluation block, so the lr ends at ~99.8% of its start, in effect constant.
  Here `lr_decay` anneals both learning rates per gradient step over the whole run (T_max =
  `steps`, down to 0); pass --no-lr-decay for the public code's effectively constant lr.
- Actions at evaluation (`act`): as in the public code, each state is repeated
  `num_candidates` (50) times, the non-EMA actor samples one action per copy, the target
  critics' min-Q scores them and one is drawn from softmax(Q) (temperature 1). With the Q
  scales of locomotion (hundreds) this is in effect an argmax; with z-scored rewards (pen) it
  really samples. `action_selection argmax` and `act_with_ema` switch both choices.
- Offline model selection: `selection_metric = "bc_loss"`; the training loop averages it per
  evaluation block (result.json `selected_step`, `--early-stop-patience`).
- Gradient-norm clipping (`grad_norm`, as in the public code) applies to actor and critic.
- The Q1/Q2 coin of L_q is drawn from torch's RNG (public code: numpy's), so a seeded run and
  a resumed one draw the same coins; the critic's weights are frozen while L_q backpropagates
  (it needs dQ/da only).
- eta = 0 (Diffusion-BC) skips the sampling chain of L_q; discount = 0 makes the TD target the
  reward itself (a contextual bandit, used by experiments/toy_bandit.py).
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dql.buffer import Batch
from dql.cli import run_cli
from dql.diffusion import BETA_SCHEDULES, Diffusion, sinusoidal_embedding
from dql.errors import ConfigError
from dql.nets import CriticEnsemble, Mish, hard_update, make_optimizer, polyak_update
from dql.training import TrainConfig, resolve_device, run_training

ALGORITHM = "diffusion_ql"
ACTION_SELECTIONS = ("softmax", "argmax")


# --------------------------------------------------------------------------- config


@dataclass
class DiffusionQLConfig(TrainConfig):
    """Diffusion-QL (Wang, Hunt, Zhou 2023): a diffusion policy trained by BC + Q-learning."""

    eta: float = 1.0
    """Weight of the Q term in the actor loss (0 = Diffusion-BC)."""
    lr: float = 3e-4
    """Actor (diffusion model) learning rate."""
    critic_lr: float = 3e-4
    """Critic learning rate."""
    discount: float = 0.99
    """Discount gamma (0: a contextual bandit, the critic regresses on r)."""
    tau: float = 0.005
    """Polyak rate of the target critics."""
    n_timesteps: int = 5
    """T, the number of diffusion steps."""
    beta_schedule: str = "vp"
    """Noise schedule: vp, linear or cosine."""
    ema_decay: float = 0.995
    """Decay of the EMA actor that produces the target actions."""
    step_start_ema: int = 1000
    """Gradient step from which the EMA actor averages (before: a copy of the actor)."""
    update_ema_every: int = 5
    """Update the EMA actor every this many gradient steps."""
    max_q_backup: bool = False
    """Target = min over critics of the max over NUM_BACKUP_ACTIONS sampled next actions."""
    num_backup_actions: int = 10
    """Next actions per next state for --max-q-backup."""
    grad_norm: float = 5.0
    """Clip actor and critic gradient norms to this (<= 0: no clipping; per task in the table)."""
    lr_decay: bool = True
    """Cosine-anneal both learning rates to 0 over STEPS (public code: effectively constant)."""
    num_candidates: int = 50
    """Actions sampled per state at evaluation, scored by the target critics' min-Q."""
    action_selection: str = "softmax"
    """Pick among the candidates by softmax over Q (public code) or argmax."""
    act_with_ema: bool = False
    """Evaluate the EMA actor instead of the actor (public code: the actor)."""
    hidden_dim: int = 256
    """Width of the denoiser's and the critics' three hidden layers."""

    def validate(self) -> None:
        super().validate()
        if not self.eta >= 0:
            raise ConfigError(f"--eta must be >= 0 (0 is Diffusion-BC), got {self.eta}")
        for name in ("lr", "critic_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}"
                )
        if not 0 <= self.discount <= 1:
            raise ConfigError(f"--discount must be in [0, 1], got {self.discount}")
        if not 0 < self.tau <= 1:
            raise ConfigError(f"--tau must be in (0, 1], got {self.tau}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        positive = ("n_timesteps", "update_ema_every", "num_backup_actions", "num_candidates")
        for name in (*positive, "hidden_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.step_start_ema < 0:
            raise ConfigError(f"--step-start-ema must be >= 0, got {self.step_start_ema}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ConfigError(
                f"--beta-schedule must be one of {', '.join(BETA_SCHEDULES)}, "
                f"got {self.beta_schedule!r}"
            )
        if self.action_selection not in ACTION_SELECTIONS:
            raise ConfigError(
                f"--action-selection must be one of {', '.join(ACTION_SELECTIONS)}, "
                f"got {self.action_selection!r}"
            )


Config = DiffusionQLConfig


# --------------------------------------------------------------------------- networks


class Denoiser(nn.Module):
    """eps_theta(x_i, i, s): sinusoidal time embedding (16) -> Linear 32 -> Mish -> Linear 16;
    concat(x_i, t_emb, s) -> 3 x (Linear hidden + Mish) -> Linear(action_dim)."""

    def __init__(
        self, observation_dim: int, action_dim: int, hidden_dim: int = 256, time_dim: int = 16
    ) -> None:
        super().__init__()
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(
            nn.Linear(time_dim, time_dim * 2), Mish(), nn.Linear(time_dim * 2, time_dim)
        )
        self.body = nn.Sequential(
            nn.Linear(action_dim + time_dim + observation_dim, hidden_dim),
            Mish(),
            nn.Linear(hidden_dim, hidden_dim),
            Mish(),
            nn.Linear(hidden_dim, hidden_dim),
            Mish(),
            nn.Linear(hidden_dim, action_dim),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        # t is (B,) or (1,); a shared step is embedded once and broadcast over the batch
        t_emb = self.time_mlp(sinusoidal_embedding(t, self.time_dim)).expand(x.shape[0], -1)
        return self.body(torch.cat([x, t_emb, state], dim=-1))


def make_actor(
    observation_dim: int,
    action_dim: int,
    max_action: float,
    hidden_dim: int = 256,
    n_timesteps: int = 5,
    beta_schedule: str = "vp",
) -> Diffusion:
    """The diffusion policy pi_theta(a | s)."""
    denoiser = Denoiser(observation_dim, action_dim, hidden_dim)
    return Diffusion(denoiser, action_dim, max_action, n_timesteps, beta_schedule)


class CandidateSelection(nn.Module):
    """pi(s): K candidate actions per state from `actor`, scored by `critic.min` (the target
    critics' min-Q), one picked per state by softmax(Q) at temperature 1 (public code) or by
    argmax. Noise is drawn from torch's global RNG (the loop seeds it per evaluation)."""

    def __init__(
        self, actor: Diffusion, critic: CriticEnsemble, num_candidates: int, argmax: bool
    ) -> None:
        super().__init__()
        self.actor, self.critic = actor, critic
        self.num_candidates, self.argmax = num_candidates, argmax

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        n, k = state.shape[0], self.num_candidates
        state_rpt = state.repeat_interleave(k, dim=0)  # (N*K, obs)
        candidates = self.actor.sample(state_rpt)  # (N*K, act)
        q = self.critic.min(state_rpt, candidates).view(n, k)
        if self.argmax:
            index = q.argmax(dim=1)
        else:
            index = torch.multinomial(torch.softmax(q, dim=1), 1).squeeze(1)
        picked = index[:, None, None].expand(-1, 1, candidates.shape[-1])
        return candidates.view(n, k, -1).gather(1, picked).squeeze(1)  # (N, act)


def _lr_schedule(
    optimizer: torch.optim.Optimizer, horizon: int | None
) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine annealing to 0 over `horizon` steps, or a constant lr when horizon is None."""
    if horizon is None:
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=horizon, eta_min=0.0)


# --------------------------------------------------------------------------- agent


class DiffusionQL:
    """The Diffusion-QL learner: `update(batch)` is one critic step and one actor step."""

    selection_metric = "bc_loss"

    def __init__(
        self, observation_dim: int, action_dim: int, max_action: float, config: DiffusionQLConfig
    ) -> None:
        self.config = config
        self.device = torch.device(resolve_device(config.device))
        self.max_action = max_action
        hidden = config.hidden_dim
        self.actor = make_actor(
            observation_dim,
            action_dim,
            max_action,
            hidden,
            config.n_timesteps,
            config.beta_schedule,
        ).to(self.device)
        self.ema_actor = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic = CriticEnsemble(
            observation_dim, action_dim, num_critics=2, hidden=(hidden,) * 3, act="mish"
        ).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_optimizer = make_optimizer(self.actor.parameters(), config.lr)
        self.critic_optimizer = make_optimizer(self.critic.parameters(), config.critic_lr)
        # lr_decay off: a constant schedule, so the state layout is the same either way
        horizon = max(config.steps, 1) if config.lr_decay else None
        self.actor_scheduler = _lr_schedule(self.actor_optimizer, horizon)
        self.critic_scheduler = _lr_schedule(self.critic_optimizer, horizon)
        self.step = 0

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.config
        state, action = batch["observations"], batch["actions"]
        target = self.td_target(batch["rewards"], batch["next_observations"], batch["terminals"])

        # ---- critic: sum_k E (Q_k(s, a) - y)^2
        current_q = self.critic(state, action)  # (2, B)
        critic_loss = (current_q - target).square().mean(dim=1).sum()
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        critic_grad_norm = self._clip(self.critic.parameters())
        self.critic_optimizer.step()

        # ---- actor: L = L_bc + eta * L_q, gradients through the whole reverse chain
        bc_loss = self.actor.loss(action, state)
        if cfg.eta > 0:
            new_action = self.actor.sample(state)
            self.critic.requires_grad_(False)  # L_q needs dQ/da, not critic weight grads
            q_new = self.critic(state, new_action)  # (2, B)
            self.critic.requires_grad_(True)
            # one critic is maximised, the other (detached) sets the scale; picked by torch's RNG
            pick = torch.randint(0, 2, (1,), device=state.device)
            q_maximised = q_new.index_select(0, pick).mean()
            q_scale = q_new.index_select(0, 1 - pick).abs().mean().detach()
            q_loss = -q_maximised / q_scale
        else:  # Diffusion-BC: skip the sampling chain
            q_loss = torch.zeros((), device=state.device)
        actor_loss = bc_loss + cfg.eta * q_loss
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        actor_grad_norm = self._clip(self.actor.parameters())
        self.actor_optimizer.step()

        # ---- targets and schedules
        self.step += 1
        if self.step % cfg.update_ema_every == 0:
            if self.step < cfg.step_start_ema:
                hard_update(self.ema_actor, self.actor)
            else:
                polyak_update(self.ema_actor, self.actor, 1.0 - cfg.ema_decay)
        polyak_update(self.critic_target, self.critic, cfg.tau)
        self.actor_scheduler.step()
        self.critic_scheduler.step()

        metrics = {
            "bc_loss": bc_loss.detach(),
            "q_loss": q_loss.detach(),
            "actor_loss": actor_loss.detach(),
            "critic_loss": critic_loss.detach(),
            "q_mean": current_q.detach().mean(),
            "target_q_mean": target.mean(),
        }
        if critic_grad_norm is not None:
            metrics["critic_grad_norm"] = critic_grad_norm
            metrics["actor_grad_norm"] = actor_grad_norm
        return metrics

    @torch.no_grad()
    def td_target(
        self, reward: torch.Tensor, next_state: torch.Tensor, terminal: torch.Tensor
    ) -> torch.Tensor:
        """y = r + gamma (1 - d) min_k Q'_k(s', a'), a' ~ pi_ema(. | s'); with max_q_backup
        min_k max_j Q'_k(s', a'_j) over `num_backup_actions` a'_j per s'. (B,)"""
        cfg = self.config
        if cfg.discount == 0:  # a contextual bandit (the toy): Q regresses on r
            return reward
        if cfg.max_q_backup:
            repeats = cfg.num_backup_actions
            next_state_rpt = next_state.repeat_interleave(repeats, dim=0)  # (B*K, obs)
            next_q = self.critic_target(next_state_rpt, self.ema_actor.sample(next_state_rpt))
            next_q = next_q.view(-1, next_state.shape[0], repeats).amax(dim=2).amin(dim=0)
        else:
            next_q = self.critic_target.min(next_state, self.ema_actor.sample(next_state))
        return reward + cfg.discount * (1.0 - terminal) * next_q

    def _clip(self, parameters: Any) -> torch.Tensor | None:
        if self.config.grad_norm <= 0:
            return None
        return nn.utils.clip_grad_norm_(parameters, self.config.grad_norm, foreach=True)

    def policy_module(self) -> CandidateSelection:
        """`act` as an nn.Module on normalised observations (used by `act` and dql.export)."""
        cfg = self.config
        return CandidateSelection(
            self.ema_actor if cfg.act_with_ema else self.actor,
            self.critic_target,
            cfg.num_candidates,
            argmax=cfg.action_selection == "argmax",
        )

    @torch.no_grad()
    def act(self, observations: np.ndarray) -> np.ndarray:
        """Batched actions for normalised observations (N, obs_dim): see `CandidateSelection`.
        Samples come from the actor (public code) or, with `act_with_ema`, the EMA actor."""
        state = torch.as_tensor(observations, dtype=torch.float32, device=self.device)
        return self.policy_module()(state).cpu().numpy()

    def state_dict(self) -> dict[str, Any]:
        return {
            "actor": self.actor.state_dict(),
            "ema_actor": self.ema_actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "actor_scheduler": self.actor_scheduler.state_dict(),
            "critic_scheduler": self.critic_scheduler.state_dict(),
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.ema_actor.load_state_dict(state["ema_actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.actor_scheduler.load_state_dict(state["actor_scheduler"])
        self.critic_scheduler.load_state_dict(state["critic_scheduler"])
        self.step = int(state["step"])


Agent = DiffusionQL


# --------------------------------------------------------------------------- entry points


def train(config: DiffusionQLConfig) -> dict[str, Any]:
    """Train Diffusion-QL as configured; returns the contents of result.json."""
    return run_training(config, DiffusionQL, ALGORITHM)


def main(argv: list[str] | None = None) -> int:
    return run_cli(DiffusionQLConfig, train, ALGORITHM, argv)


if __name__ == "__main__":
    sys.exit(main())
