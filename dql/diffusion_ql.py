"""Diffusion-QL: "Diffusion Policies as an Expressive Policy Class for Offline Reinforcement
Learning" (Wang, Hunt, Zhou, ICLR 2023). Public code: github.com/Zhendong-Wang/Diffusion-Policies-for-Offline-RL.

The policy pi_theta(a | s) is a conditional DDPM over actions (`dql.diffusion.Diffusion`, T = 5
steps, VP schedule, epsilon prediction, predicted a_0 clipped to the action box at every step).
It is trained by behaviour cloning plus Q-learning:

    L_actor(theta) = L_bc + eta * L_q
    L_bc   = E_{(s,a) ~ D, i, eps} || eps - eps_theta(sqrt(abar_i) a + sqrt(1 - abar_i) eps, i, s) ||^2
    L_q    = - mean_s Q_k(s, a_0) / mean_s |Q_j(s, a_0)|.detach(),   a_0 ~ pi_theta(. | s)

where a_0 is sampled through the whole reverse chain with gradients (`q_gradient = "chain"`,
the paper), and (k, j) is (1, 2) or (2, 1) with probability 1/2 each (as the public code does: the critic that is maximised is not
the one that sets the scale). Twin critics Q_1, Q_2 minimise

    L_critic = sum_k E (Q_k(s, a) - y)^2,   y = r + gamma (1 - terminal) min_k Q'_k(s', a'),
    a' ~ pi_ema(. | s')   (max_q_backup: max over `num_backup_actions` a' per critic, then min)

with Polyak-averaged target critics Q' (tau) and an EMA copy of the actor (pi_ema). The critic
is updated first, then the actor against the freshly updated critic (public code's order).

`q_gradient = "approx"` is EDP's action approximation (Kang et al., NeurIPS 2023) instead of
the chain: L_q is evaluated at the one-step reconstruction of the data action that L_bc's
denoiser pass already makes,

    a_i = sqrt(abar_i) a + sqrt(1 - abar_i) eps,   a_0_hat = (a_i - sqrt(1 - abar_i) eps_theta(a_i, i, s)) / sqrt(abar_i)

clipped to the action box, with the same i and eps as L_bc; so no gradient flows through the
reverse chain and the actor step costs one denoiser pass instead of T + 1. The critic's target
still samples the EMA actor's full chain, and acting is unchanged.

Deliberate choices and deviations (see also the field docstrings):
- EMA warm-up: before `step_start_ema` the public code leaves the EMA actor at its random
  initialisation, so the first 1000 target actions come from an untrained network. Here the
  EMA actor is a copy of the actor until then (the usual DDPM/Diffuser convention).
- lr schedule: the public code's CosineAnnealingLR has T_max = number of epochs but is stepped
  once per 50-epoch evaluation block, so the lr ends at ~99.9% of its start, in effect constant.
  Here the lr is constant by default (`lr_decay` off), which is that schedule to within 0.1%;
  `--lr-decay` anneals both learning rates per gradient step to 0 over `steps`: below the
  paper's lr for most of any run (half of it at mid-run), whatever the budget.
- Observations: raw states by default, as the public code (`normalize_observations` off, where
  the suite's default for the other algorithms is on); `--normalize-observations` standardises.
- Evaluation episodes: 10 on the Gym locomotion tasks, 100 on every other task (AntMaze, pen,
  kitchen), as the public code (experiments/hyperparams/diffusion_ql.toml).
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

Speed and batched seeds (the maths above is unchanged by any of this):
- Written for one seed. `dql.batched_seeds.SeedStack` trains S seeds as one model: the losses
  are `@per_seed` (vmap over stacked weights), the step's noise is `@per_seed_noise` (seed k
  draws from its own stream exactly what a run seeded k draws), and `clip_grad_norm_` clips each
  seed's gradient by its own norm. The twin critics are one ensemble of 2 (batched matmuls).
- All random numbers of a step are drawn first (`draw_noise`); the two losses are then pure
  functions of (batch, noise), which `torch.compile` compiles (`compile`, for runs of at least
  COMPILE_MIN_STEPS steps, where the minute or two of compilation is repaid). The optimisers
  are fused Adam, targets move by one foreach lerp, and nothing syncs with the host.
- `precision bf16` (off by default) runs the losses under bfloat16 autocast: matmuls in bf16,
  reductions in fp32. Losses stay within ~1% of fp32 over the steps checked in
  tests/test_speed.py; acting stays fp32.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from dql.batched_seeds import clip_grad_norm_, per_seed, per_seed_noise
from dql.buffer import Batch
from dql.cli import run_cli
from dql.diffusion import BetaSchedule, Diffusion, sinusoidal_embedding
from dql.errors import ConfigError
from dql.nets import (
    CriticEnsemble,
    Mish,
    Precision,
    autocast,
    hard_update,
    make_optimizer,
    mlp,
    polyak_update,
)
from dql.training import Checkpointed, TrainConfig, resolve_device, run_training, spec

ALGORITHM = "diffusion_ql"
ActionSelection = Literal["softmax", "argmax"]
QGradient = Literal["chain", "approx"]
COMPILE_MIN_STEPS = 20_000  # shorter runs (tests, demos) stay eager: compiling would dominate


# --------------------------------------------------------------------------- config


@dataclass
class DiffusionQLConfig(TrainConfig):
    """Diffusion-QL (Wang, Hunt, Zhou 2023): a diffusion policy trained by BC + Q-learning."""

    q_gradient: QGradient = "chain"
    """L_q through the whole reverse chain (chain, the paper) or EDP's one-step action approximation (approx)."""
    normalize_observations: bool = False
    """Standardise observations with the dataset's mean and std (public code: raw states)."""
    eta: float = field(default=1.0, metadata=spec(">= 0"))
    """Weight of the Q term in the actor loss (0 = Diffusion-BC)."""
    actor_lr: float = field(default=3e-4, metadata=spec("> 0"))
    """Actor (diffusion model) learning rate (the public code's `lr`)."""
    critic_lr: float = field(default=3e-4, metadata=spec("> 0"))
    """Critic learning rate."""
    discount: float = field(default=0.99, metadata=spec("[0, 1]"))
    """Discount gamma (0: a contextual bandit, the critic regresses on r)."""
    tau: float = field(default=0.005, metadata=spec("(0, 1]"))
    """Polyak rate of the target critics."""
    n_timesteps: int = field(default=5, metadata=spec(">= 1"))
    """T, the number of diffusion steps."""
    beta_schedule: BetaSchedule = "vp"
    """Noise schedule: vp, linear or cosine."""
    ema_decay: float = field(default=0.995, metadata=spec("[0, 1)"))
    """Decay of the EMA actor that produces the target actions."""
    step_start_ema: int = field(default=1000, metadata=spec(">= 0"))
    """Gradient step from which the EMA actor averages (before: a copy of the actor)."""
    update_ema_every: int = field(default=5, metadata=spec(">= 1"))
    """Update the EMA actor every this many gradient steps."""
    max_q_backup: bool = False
    """Target = min over critics of the max over NUM_BACKUP_ACTIONS sampled next actions."""
    num_backup_actions: int = field(default=10, metadata=spec(">= 1"))
    """Next actions per next state for --max-q-backup."""
    grad_norm: float = 5.0
    """Clip actor and critic gradient norms to this (<= 0: no clipping; per task in the table)."""
    lr_decay: bool = False
    """Cosine-anneal both learning rates to 0 over STEPS (off: constant, as the public code in effect)."""
    num_candidates: int = field(default=50, metadata=spec(">= 1"))
    """Actions sampled per state at evaluation, scored by the target critics' min-Q."""
    action_selection: ActionSelection = "softmax"
    """Pick among the candidates by softmax over Q (public code) or argmax."""
    act_with_ema: bool = False
    """Evaluate the EMA actor instead of the actor (public code: the actor)."""
    hidden: tuple[int, ...] = field(default=(256, 256, 256), metadata=spec("widths"))
    """Widths of the denoiser's and the critics' hidden layers (paper and public code: 3 x 256)."""
    time_dim: int = field(default=16, metadata=spec(">= 4"))
    """Width of the denoiser's sinusoidal time embedding (public code: 16; its toy: 4)."""
    compile: bool = True
    """Compile the training step with torch.compile (runs of at least 20k steps; same maths)."""
    precision: Precision = "fp32"
    """fp32, or bf16: the training step's matmuls in bfloat16 (autocast; ~1.5x faster on CPUs with AVX-512 bf16, losses within ~1% of fp32)."""

    # runs saved before the shared naming scheme (actor_lr/critic_lr, hidden widths) still load
    RENAMED_FIELDS: ClassVar[dict[str, tuple[str, Any]]] = {
        "lr": ("actor_lr", None),
        "hidden_dim": ("hidden", lambda width: [width] * 3),
    }

    def validate(self) -> None:
        super().validate()
        if self.time_dim % 2:  # sine and cosine halves of the embedding
            raise ConfigError(f"--time-dim must be even and >= 4, got {self.time_dim}")


Config = DiffusionQLConfig


# --------------------------------------------------------------------------- networks


class Denoiser(nn.Module):
    """eps_theta(x_i, i, s): sinusoidal time embedding (16) -> Linear 32 -> Mish -> Linear 16;
    concat(x_i, t_emb, s) -> per width (Linear + Mish) -> Linear(action_dim). x_i (B, A), s
    (B, obs); t per row (B,) or shared by every row (1,)."""

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (256, 256, 256),
        time_dim: int = 16,
    ) -> None:
        super().__init__()
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(
            nn.Linear(time_dim, time_dim * 2), Mish(), nn.Linear(time_dim * 2, time_dim)
        )
        self.body = mlp(action_dim + time_dim + observation_dim, action_dim, hidden, act="mish")

    def forward(self, x: torch.Tensor, t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        # a shared step is embedded once and broadcast over the rows
        t_emb = self.time_mlp(sinusoidal_embedding(t, self.time_dim))
        t_emb = t_emb.expand(*x.shape[:-1], self.time_dim)
        return self.body(torch.cat([x, t_emb, state], dim=-1)).float()  # fp32 under autocast


def twin_critic(
    observation_dim: int, action_dim: int, hidden: Sequence[int] = (256, 256, 256)
) -> CriticEnsemble:
    """Q_1, Q_2 on concat(s, a), per width (Linear + Mish) -> Linear 1: (B, .) -> (2, B)."""
    return CriticEnsemble(observation_dim, action_dim, 2, tuple(hidden), act="mish")


def make_actor(
    observation_dim: int,
    action_dim: int,
    max_action: float,
    hidden: Sequence[int] = (256, 256, 256),
    n_timesteps: int = 5,
    beta_schedule: str = "vp",
    time_dim: int = 16,
) -> Diffusion:
    """The diffusion policy pi_theta(a | s)."""
    denoiser = Denoiser(observation_dim, action_dim, hidden, time_dim)
    return Diffusion(denoiser, action_dim, max_action, n_timesteps, beta_schedule)


class CandidateSelection(nn.Module):
    """pi(s): K candidate actions per state from `actor`, scored by `critic.min` (the target
    critics' min-Q), one picked per state by softmax(Q) at temperature 1 (public code) or by
    argmax. Noise is drawn from `generator`, by default torch's global RNG (the loop seeds it
    per evaluation)."""

    def __init__(self, actor: Diffusion, critic: nn.Module, num_candidates: int, argmax: bool):
        super().__init__()
        self.actor, self.critic = actor, critic
        self.num_candidates, self.argmax = num_candidates, argmax

    def forward(
        self, state: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        n, k = state.shape[0], self.num_candidates
        state_rpt = state.repeat_interleave(k, dim=0)  # (N*K, obs)
        noise_shape = (self.actor.num_steps, state_rpt.shape[0], self.actor.action_dim)
        noise = torch.randn(noise_shape, generator=generator, device=state.device)
        candidates = self.actor.sample(state_rpt, noise)  # (N*K, act)
        q = self.critic.min(state_rpt, candidates).view(n, k)
        if self.argmax:
            index = q.argmax(dim=1)
        else:
            index = torch.multinomial(torch.softmax(q, dim=1), 1, generator=generator).squeeze(1)
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


class DiffusionQL(Checkpointed):
    """The Diffusion-QL learner: `update(batch)` is one critic step and one actor step."""

    selection_metric = "bc_loss"
    extra_state = ("step",)

    def __init__(
        self, observation_dim: int, action_dim: int, max_action: float, config: DiffusionQLConfig
    ) -> None:
        cfg = self.config = config
        self.device = torch.device(resolve_device(config.device))
        self.observation_dim, self.action_dim = observation_dim, action_dim
        self.max_action = max_action
        self.actor = make_actor(
            observation_dim,
            action_dim,
            max_action,
            cfg.hidden,
            cfg.n_timesteps,
            cfg.beta_schedule,
            cfg.time_dim,
        ).to(self.device)
        self.critic = twin_critic(observation_dim, action_dim, cfg.hidden).to(self.device)
        self.ema_actor = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_optimizer = make_optimizer(self.actor.parameters(), cfg.actor_lr)
        self.critic_optimizer = make_optimizer(self.critic.parameters(), cfg.critic_lr)
        # lr_decay off: a constant schedule, so the state layout is the same either way
        horizon = max(cfg.steps, 1) if cfg.lr_decay else None
        self.actor_scheduler = _lr_schedule(self.actor_optimizer, horizon)
        self.critic_scheduler = _lr_schedule(self.critic_optimizer, horizon)
        self.step = 0
        self.compiled = cfg.compile and cfg.steps >= COMPILE_MIN_STEPS
        self._critic_loss = torch.compile(self.critic_loss) if self.compiled else self.critic_loss
        self._actor_loss = torch.compile(self.actor_loss) if self.compiled else self.actor_loss

    # ------------------------------------------------------------------ the losses

    @per_seed_noise
    def draw_noise(self, batch_size: int) -> dict[str, torch.Tensor | None]:
        """Every random number of one step: x_T and the z's of the target chain and of the
        actor's chain, the steps and noise of L_bc, and the coin that picks which critic L_q
        maximises."""
        cfg = self.config
        steps, act, rows = cfg.n_timesteps, self.action_dim, batch_size
        target_rows = rows * cfg.num_backup_actions if cfg.max_q_backup else rows
        sizes = [
            steps * target_rows * act if cfg.discount > 0 else 0,  # target chain
            steps * rows * act if cfg.eta > 0 and cfg.q_gradient == "chain" else 0,  # actor chain
            rows * act,  # L_bc noise
        ]
        normal = torch.randn(sum(sizes), device=self.device)
        uniform = torch.rand(rows + 1, device=self.device)
        target, chain, bc = normal.split(sizes)
        return {
            "bc_noise": bc.view(rows, act),
            "bc_steps": (uniform[:rows] * steps).long().clamp_(max=steps - 1),
            "critic_pick": (uniform[rows] < 0.5).long(),  # 1: maximise Q_2, scale by Q_1
            # (T, rows, A): noise[j] for the j-th reverse step; none for a chain not run
            "target_chain": target.view(steps, target_rows, act) if sizes[0] else None,
            "actor_chain": chain.view(steps, rows, act) if sizes[1] else None,
        }

    @torch.no_grad()
    def td_target(
        self,
        reward: torch.Tensor,
        next_state: torch.Tensor,
        terminal: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """y = r + gamma (1 - d) min_k Q'_k(s', a'), a' ~ pi_ema(. | s'); with max_q_backup
        min_k max_j Q'_k(s', a'_j) over `num_backup_actions` a'_j per s'. (B,); `noise` is
        the target chain's (draw_noise), torch's RNG when None."""
        cfg = self.config
        if cfg.discount == 0:  # a contextual bandit (the toy): Q regresses on r
            return reward
        repeats = cfg.num_backup_actions if cfg.max_q_backup else 1
        next_state_rpt = next_state.repeat_interleave(repeats, dim=0)  # (B*K, obs)
        next_action = self.ema_actor.sample(next_state_rpt, noise)  # noise None: torch's RNG
        next_q = self.critic_target(next_state_rpt, next_action)  # (2, B*K)
        next_q = next_q.unflatten(-1, (next_state.shape[0], repeats)).amax(-1).amin(0)
        return reward + cfg.discount * (1.0 - terminal) * next_q

    @per_seed
    def critic_loss(
        self, batch: Batch, noise: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """sum_k E (Q_k(s, a) - y)^2, and metrics."""
        target = self.td_target(
            batch["rewards"],
            batch["next_observations"],
            batch["terminals"],
            noise["target_chain"],
        )
        current_q = self.critic(batch["observations"], batch["actions"])  # (2, B)
        loss = (current_q - target).square().mean(dim=-1).sum()
        return loss, {"q_mean": current_q.detach().mean(), "target_q_mean": target.mean()}

    @per_seed
    def actor_loss(
        self, batch: Batch, noise: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_bc + eta L_q, and metrics. L_q's action comes through the whole reverse chain
        (chain) or from L_bc's own denoiser pass (approx); the critic's weights are frozen by
        the caller (L_q needs dQ/da only)."""
        cfg = self.config
        state, action = batch["observations"], batch["actions"]
        steps, bc_noise = noise["bc_steps"], noise["bc_noise"]
        if cfg.eta == 0:  # Diffusion-BC: no sampling chain
            bc_loss = self.actor.loss(action, state, steps, bc_noise)
            # The loss is bc_loss itself: `bc_loss + 0 * zeros` compiles (torch 2.13) to an
            # output that has lost its grad_fn once its detached copy is also returned.
            q_loss, actor_loss = torch.zeros_like(bc_loss), bc_loss
        else:
            if cfg.q_gradient == "approx":  # EDP: L_q at L_bc's one-step reconstruction
                bc_loss, new_action = self.actor.loss_and_reconstruction(
                    action, state, steps, bc_noise
                )
            else:
                bc_loss = self.actor.loss(action, state, steps, bc_noise)
                new_action = self.actor.sample(state, noise["actor_chain"])
            # one critic is maximised, the other (detached) sets the scale
            pick = noise["critic_pick"]
            q_maximised = self.critic.member(pick, state, new_action).mean()
            with torch.no_grad():  # no backward through the scale's critic
                q_scale = self.critic.member(1 - pick, state, new_action).abs().mean()
            q_loss = -q_maximised / q_scale
            actor_loss = bc_loss + cfg.eta * q_loss
        metrics = {"bc_loss": bc_loss.detach(), "q_loss": q_loss.detach()}
        return actor_loss, {**metrics, "actor_loss": actor_loss.detach()}

    # ------------------------------------------------------------------ the step

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        noise = self.draw_noise(batch["rewards"].shape[-1])

        # ---- critic: sum_k E (Q_k(s, a) - y)^2
        with self._precision():
            critic_loss, metrics = self._critic_loss(batch, noise)
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.sum().backward()  # the sum of batched seeds' losses (one seed: the loss)
        critic_grad_norm = self._clip(self.critic)
        self.critic_optimizer.step()

        # ---- actor: L = L_bc + eta * L_q, gradients through the whole reverse chain
        self.critic.requires_grad_(False)
        with self._precision():
            actor_loss, actor_metrics = self._actor_loss(batch, noise)
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.sum().backward()
        self.critic.requires_grad_(True)
        actor_grad_norm = self._clip(self.actor)
        self.actor_optimizer.step()

        # ---- targets and schedules
        cfg = self.config
        self.step += 1
        if self.step % cfg.update_ema_every == 0:
            if self.step < cfg.step_start_ema:
                hard_update(self.ema_actor, self.actor)
            else:
                polyak_update(self.ema_actor, self.actor, 1.0 - cfg.ema_decay)
        polyak_update(self.critic_target, self.critic, cfg.tau)
        self.actor_scheduler.step()
        self.critic_scheduler.step()

        metrics = {**actor_metrics, "critic_loss": critic_loss.detach(), **metrics}
        if critic_grad_norm is not None:
            metrics["critic_grad_norm"] = critic_grad_norm
            metrics["actor_grad_norm"] = actor_grad_norm
        return metrics

    def _precision(self) -> torch.autocast:
        return autocast(self.config.precision, self.device)

    def _clip(self, module: nn.Module) -> torch.Tensor | None:
        """Clip the gradient to norm `grad_norm`; the norm before clipping (None: no clip)."""
        if self.config.grad_norm <= 0:
            return None
        return clip_grad_norm_(self, module, self.config.grad_norm)

    # ------------------------------------------------------------------ acting

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
    def act(self, observations: np.ndarray, generator: torch.Generator | None = None) -> np.ndarray:
        """Batched actions for normalised observations (N, obs_dim): see `CandidateSelection`.
        Samples come from the actor (public code) or, with `act_with_ema`, the EMA actor; the
        noise from `generator`, by default torch's global RNG."""
        state = torch.as_tensor(observations, dtype=torch.float32, device=self.device)
        return self.policy_module()(state, generator).cpu().numpy()


Agent = DiffusionQL


# --------------------------------------------------------------------------- entry points


def train(config: DiffusionQLConfig) -> dict[str, Any]:
    """Train Diffusion-QL as configured; returns the contents of result.json."""
    return run_training(config, DiffusionQL, ALGORITHM)


def main(argv: list[str] | None = None) -> int:
    return run_cli(DiffusionQLConfig, train, ALGORITHM, argv)


if __name__ == "__main__":
    sys.exit(main())
