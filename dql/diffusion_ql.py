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
- Seed dimension. Every network holds its weights as (S, in, out) and runs as batched matmuls
  (`dql.nets.EnsembleLinear`); the twin critics of S seeds are one ensemble of 2S members. A
  normal run has S = 1 and takes (B, ...) batches; `DiffusionQL(..., seeds=[s_1..s_S])` trains S
  independent seeds as one model on (S, B, ...) batches (`dql.batched_seeds` drives it). Losses
  are computed per seed, shape (S,), and summed before backward: no parameter is shared, so each
  seed's gradient is its own; Adam is elementwise; grad-norm clipping and the |Q| normaliser
  are per seed. Seed k is initialised and draws its noise from its own generator exactly as a
  single run seeded with k draws from torch's global RNG, so batching does not change a seed.
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

from dql.buffer import Batch
from dql.cli import run_cli
from dql.diffusion import BetaSchedule, Diffusion, sinusoidal_embedding
from dql.errors import ConfigError
from dql.nets import (
    EnsembleLinear,
    EnsembleMLP,
    Mish,
    Precision,
    autocast,
    hard_update,
    make_optimizer,
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
    """eps_theta(x_i, i, s) of S seeds at once: sinusoidal time embedding (16) -> Linear 32 ->
    Mish -> Linear 16; concat(x_i, t_emb, s) -> per width (Linear + Mish) -> Linear(action_dim).

    Inputs (S, B, .) give outputs (S, B, action_dim), seed k through its own weights; with
    S = 1, inputs (B, .) give (B, action_dim). t is per row, (S, B) or (B,), or shared, (1,)."""

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (256, 256, 256),
        time_dim: int = 16,
        num_seeds: int = 1,
    ) -> None:
        super().__init__()
        self.time_dim, self.num_seeds = time_dim, num_seeds

        def linear(in_dim: int, out_dim: int) -> EnsembleLinear:
            return EnsembleLinear(in_dim, out_dim, num_seeds)

        self.time_mlp = nn.Sequential(
            linear(time_dim, time_dim * 2), Mish(), linear(time_dim * 2, time_dim)
        )
        widths = [action_dim + time_dim + observation_dim, *hidden]
        layers: list[nn.Module] = []
        for in_dim, out_dim in zip(widths[:-1], widths[1:]):
            layers += [linear(in_dim, out_dim), Mish()]
        self.body = nn.Sequential(*layers, linear(widths[-1], action_dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        t_emb = sinusoidal_embedding(t, self.time_dim)  # (1, 16) for a shared step, else (..., 16)
        unbatched = x.dim() == 2  # (B, .): one seed
        if unbatched:
            x, state, t_emb = x[None], state[None], t_emb[None]
        seeds, rows = x.shape[0], x.shape[1]
        if t_emb.dim() == 2:  # a shared step is embedded once and broadcast over the rows
            t_emb = t_emb.expand(seeds, 1, self.time_dim)
        t_emb = self.time_mlp(t_emb).expand(seeds, rows, self.time_dim)
        eps = self.body(torch.cat([x, t_emb, state], dim=-1)).float()  # fp32 under autocast
        return eps[0] if unbatched else eps


class TwinCritic(nn.Module):
    """Q_1, Q_2 on concat(s, a), per width (Linear + Mish) -> Linear 1, for S seeds: one
    ensemble of 2S members ordered (seed, critic). (S, B, .) -> (S, 2, B); (B, .) -> (2, B)."""

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (256, 256, 256),
        num_seeds: int = 1,
    ) -> None:
        super().__init__()
        self.net = EnsembleMLP(
            observation_dim + action_dim, 1, 2 * num_seeds, tuple(hidden), act="mish"
        )

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([state, action], dim=-1)
        unbatched = x.dim() == 2
        if unbatched:
            x = x[None]
        seeds, rows, width = x.shape
        both = x[:, None].expand(seeds, 2, rows, width).reshape(2 * seeds, rows, width)
        q = self.net(both).float().view(seeds, 2, rows)  # the losses in fp32 under autocast
        return q[0] if unbatched else q

    def min(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """min(Q_1, Q_2): (S, B) or (B,)."""
        return self(state, action).amin(dim=-2)

    def one(self, state: torch.Tensor, action: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        """Only Q_{which[k] + 1} of each seed k, on (S, B, .) inputs: (S, B); which (S,)."""
        x = torch.cat([state, action], dim=-1)
        members = 2 * torch.arange(x.shape[0], device=x.device) + which
        for layer in self.net.net:
            if isinstance(layer, EnsembleLinear):
                x = torch.baddbmm(layer.bias[members], x, layer.weight[members])
            else:
                x = layer(x)
        return x.squeeze(-1).float()


def make_actor(
    observation_dim: int,
    action_dim: int,
    max_action: float,
    hidden: Sequence[int] = (256, 256, 256),
    n_timesteps: int = 5,
    beta_schedule: str = "vp",
    num_seeds: int = 1,
    time_dim: int = 16,
) -> Diffusion:
    """The diffusion policy pi_theta(a | s) (of S seeds)."""
    denoiser = Denoiser(observation_dim, action_dim, hidden, time_dim, num_seeds)
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
    """The Diffusion-QL learner: `update(batch)` is one critic step and one actor step.

    `seeds=None` is a normal run (S = 1, torch's global RNG, (B, ...) batches); `seeds=[...]`
    trains those seeds as one model on (S, B, ...) batches, seed k with its own generator."""

    selection_metric = "bc_loss"
    extra_state = ("step",)

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        max_action: float,
        config: DiffusionQLConfig,
        seeds: Sequence[int] | None = None,
    ) -> None:
        self.config = config
        self.device = torch.device(resolve_device(config.device))
        self.observation_dim, self.action_dim = observation_dim, action_dim
        self.max_action = max_action
        self.seeds = None if seeds is None else [int(s) for s in seeds]
        self.num_seeds = 1 if seeds is None else len(self.seeds)
        self.actor, self.critic = self._networks(self.num_seeds)
        # one generator per seed; None: torch's global RNG (a normal run, seeded by the loop)
        self.generators: list[torch.Generator | None] = [None]
        if self.seeds is not None:  # seed k draws weights and noise as a run seeded k would
            self.generators = []
            for k, seed in enumerate(self.seeds):
                with torch.random.fork_rng():
                    torch.manual_seed(seed)
                    self._copy_into_seed(k, *self._networks(1))
                    self.generators.append(torch.Generator(device=self.device))
                    if self.device.type == "cpu":  # the CPU stream continues after the init
                        self.generators[-1].set_state(torch.get_rng_state())
                    else:
                        self.generators[-1].manual_seed(seed)
        self.actor.to(self.device)
        self.critic.to(self.device)
        self.ema_actor = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_optimizer = make_optimizer(self.actor.parameters(), config.actor_lr)
        self.critic_optimizer = make_optimizer(self.critic.parameters(), config.critic_lr)
        # lr_decay off: a constant schedule, so the state layout is the same either way
        horizon = max(config.steps, 1) if config.lr_decay else None
        self.actor_scheduler = _lr_schedule(self.actor_optimizer, horizon)
        self.critic_scheduler = _lr_schedule(self.critic_optimizer, horizon)
        self.step = 0
        self.compiled = config.compile and config.steps >= COMPILE_MIN_STEPS
        self._critic_loss = torch.compile(self.critic_loss) if self.compiled else self.critic_loss
        self._actor_loss = torch.compile(self.actor_loss) if self.compiled else self.actor_loss

    def _networks(self, num_seeds: int) -> tuple[Diffusion, TwinCritic]:
        cfg, hidden = self.config, self.config.hidden
        actor = make_actor(
            self.observation_dim,
            self.action_dim,
            self.max_action,
            hidden,
            cfg.n_timesteps,
            cfg.beta_schedule,
            num_seeds,
            cfg.time_dim,
        )
        return actor, TwinCritic(self.observation_dim, self.action_dim, hidden, num_seeds)

    @torch.no_grad()
    def _copy_into_seed(self, k: int, actor: Diffusion, critic: TwinCritic) -> None:
        for mine, single in ((self.actor, actor), (self.critic, critic)):
            for param, value in zip(mine.parameters(), single.parameters()):
                _seed_rows(param, k, self.num_seeds).copy_(value)

    # ------------------------------------------------------------------ the losses

    def draw_noise(self, batch_size: int) -> dict[str, torch.Tensor]:
        """Every random number of one step, (S, ...) each, seed k's from its generator:
        x_T and the z's of the target chain and of the actor's chain, the steps and noise of
        L_bc, and the coin that picks which critic L_q maximises."""
        cfg = self.config
        steps, act, rows = cfg.n_timesteps, self.action_dim, batch_size
        target_rows = rows * cfg.num_backup_actions if cfg.max_q_backup else rows
        sizes = [
            steps * target_rows * act if cfg.discount > 0 else 0,  # target chain
            steps * rows * act if cfg.eta > 0 and cfg.q_gradient == "chain" else 0,  # actor chain
            rows * act,  # L_bc noise
        ]
        normal = _stack(
            [torch.randn(sum(sizes), generator=g, device=self.device) for g in self.generators]
        )
        uniform = _stack(
            [torch.rand(rows + 1, generator=g, device=self.device) for g in self.generators]
        )
        target, chain, bc = normal.split(sizes, dim=1)
        seeds = self.num_seeds
        noise = {
            "bc_noise": bc.view(seeds, rows, act),
            "bc_steps": (uniform[:, :rows] * steps).long().clamp_(max=steps - 1),
            "critic_pick": (uniform[:, rows] < 0.5).long(),  # 1: maximise Q_2, scale by Q_1
            "target_chain": None,  # a chain that is not run (discount 0, eta 0) gets none
            "actor_chain": None,
        }
        if sizes[0]:  # (T, S, rows, A): noise[j] for the j-th reverse step
            noise["target_chain"] = target.view(seeds, steps, target_rows, act).transpose(0, 1)
        if sizes[1]:
            noise["actor_chain"] = chain.view(seeds, steps, rows, act).transpose(0, 1)
        return noise

    @torch.no_grad()
    def td_target(
        self,
        reward: torch.Tensor,
        next_state: torch.Tensor,
        terminal: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """y = r + gamma (1 - d) min_k Q'_k(s', a'), a' ~ pi_ema(. | s'); with max_q_backup
        min_k max_j Q'_k(s', a'_j) over `num_backup_actions` a'_j per s'. (S, B) or (B,);
        `noise` is the target chain's (draw_noise), torch's RNG when None."""
        cfg = self.config
        if cfg.discount == 0:  # a contextual bandit (the toy): Q regresses on r
            return reward
        repeats = cfg.num_backup_actions if cfg.max_q_backup else 1
        next_state_rpt = next_state.repeat_interleave(repeats, dim=-2)  # (..., B*K, obs)
        if noise is None:
            next_action = self.ema_actor.sample(next_state_rpt)
        else:
            next_action = self.ema_actor.sample(next_state_rpt, noise)
        next_q = self.critic_target(next_state_rpt, next_action)  # (..., 2, B*K)
        next_q = next_q.unflatten(-1, (next_state.shape[-2], repeats)).amax(-1).amin(-2)
        return reward + cfg.discount * (1.0 - terminal) * next_q

    def critic_loss(
        self, batch: Batch, noise: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """sum_k E (Q_k(s, a) - y)^2 per seed: (S,), and metrics."""
        target = self.td_target(
            batch["rewards"],
            batch["next_observations"],
            batch["terminals"],
            noise["target_chain"],
        )
        current_q = self.critic(batch["observations"], batch["actions"])  # (S, 2, B)
        loss = (current_q - target[:, None]).square().mean(dim=-1).sum(dim=-1)
        return loss, {"q_mean": current_q.detach().mean((1, 2)), "target_q_mean": target.mean(1)}

    def actor_loss(
        self, batch: Batch, noise: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_bc + eta L_q per seed: (S,), and metrics. L_q's action comes through the whole
        reverse chain (chain) or from L_bc's own denoiser pass (approx); the critic's weights
        are frozen by the caller (L_q needs dQ/da only)."""
        cfg = self.config
        state, action = batch["observations"], batch["actions"]
        steps, bc_noise = noise["bc_steps"], noise["bc_noise"]
        if cfg.eta == 0:  # Diffusion-BC: no sampling chain
            bc_loss = self.actor.loss(action, state, steps, bc_noise)  # (S,)
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
            pick = noise["critic_pick"]  # (S,)
            q_maximised = self.critic.one(state, new_action, pick).mean(-1)
            with torch.no_grad():  # no backward through the scale's critic
                q_scale = self.critic.one(state, new_action, 1 - pick).abs().mean(-1)
            q_loss = -q_maximised / q_scale
            actor_loss = bc_loss + cfg.eta * q_loss
        metrics = {"bc_loss": bc_loss.detach(), "q_loss": q_loss.detach()}
        return actor_loss, {**metrics, "actor_loss": actor_loss.detach()}

    # ------------------------------------------------------------------ the step

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        unbatched = batch["observations"].dim() == 2  # (B, .): one seed, scalar metrics
        if unbatched:
            batch = {k: v[None] for k, v in batch.items()}
        noise = self.draw_noise(batch["observations"].shape[1])

        # ---- critic: sum_k E (Q_k(s, a) - y)^2
        with self._precision():
            critic_loss, metrics = self._critic_loss(batch, noise)
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.sum().backward()  # seeds share no weight: each gets its own gradient
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
        return {k: v[0] for k, v in metrics.items()} if unbatched else metrics

    def _precision(self) -> torch.autocast:
        return autocast(self.config.precision, self.device)

    @torch.no_grad()
    def _clip(self, module: nn.Module) -> torch.Tensor | None:
        """Clip each seed's gradient to norm `grad_norm` (as clip_grad_norm_ does for one
        network); returns the norms before clipping, (S,)."""
        if self.config.grad_norm <= 0:
            return None
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        per_seed = [g.view(self.num_seeds, -1) for g in grads]  # seed k's rows are contiguous
        norms = torch.stack([g.square().sum(dim=1) for g in per_seed]).sum(dim=0).sqrt()
        scale = (self.config.grad_norm / (norms + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(per_seed, [scale[:, None]] * len(per_seed))
        return norms

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

    # ------------------------------------------------------------------ checkpoints

    # Checkpointed saves the modules, optimisers, schedulers and `step`; batched seeds add
    # each seed's sampling generator.
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.seeds is not None:
            state["generators"] = [g.get_state() for g in self.generators]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        generators = state.get("generators")
        super().load_state_dict(state)  # which leaves the generators (SEED_BATCH_KEYS) to us
        if self.seeds is not None and generators is not None:
            for generator, saved in zip(self.generators, generators):
                generator.set_state(saved.cpu())

    def seed_state_dict(self, k: int) -> dict[str, Any]:
        """Seed k of a batched model as a normal run's state_dict (loads into seeds=None),
        plus its generator's state."""
        state = {
            name: _module_rows(getattr(self, name), k, self.num_seeds)
            for name in ("actor", "ema_actor", "critic", "critic_target")
        }
        for name in ("actor", "critic"):
            optimizer = getattr(self, f"{name}_optimizer")
            params = list(getattr(self, name).parameters())
            state[f"{name}_optimizer"] = _optimizer_rows(optimizer, params, k, self.num_seeds)
            state[f"{name}_scheduler"] = getattr(self, f"{name}_scheduler").state_dict()
        state["step"] = self.step
        if self.seeds is not None:
            state["generator"] = self.generators[k].get_state()
        return state

    @torch.no_grad()
    def load_seed_state_dict(self, k: int, state: dict[str, Any]) -> None:
        """Inverse of `seed_state_dict`: a normal run's state into seed k (a resumed seed)."""
        for name in ("actor", "ema_actor", "critic", "critic_target"):
            module = getattr(self, name)
            for param_name, param in module.named_parameters():
                _seed_rows(param, k, self.num_seeds).copy_(state[name][param_name])
        for name in ("actor", "critic"):
            optimizer = getattr(self, f"{name}_optimizer")
            params = list(getattr(self, name).parameters())
            _load_optimizer_rows(optimizer, params, k, self.num_seeds, state[f"{name}_optimizer"])
            getattr(self, f"{name}_scheduler").load_state_dict(state[f"{name}_scheduler"])
        self.step = int(state["step"])
        if self.seeds is not None and "generator" in state:
            self.generators[k].set_state(state["generator"].cpu())


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0][None] if len(tensors) == 1 else torch.stack(tensors)


def _seed_rows(tensor: torch.Tensor, k: int, num_seeds: int) -> torch.Tensor:
    """Seed k's members along dim 0 (1 per seed in the actor, 2 in the twin critic)."""
    members = tensor.shape[0] // num_seeds
    return tensor[k * members : (k + 1) * members]


def _module_rows(module: nn.Module, k: int, num_seeds: int) -> dict[str, torch.Tensor]:
    """A module's state_dict with every parameter cut to seed k (buffers are shared)."""
    params = dict(module.named_parameters())
    return {
        name: (_seed_rows(value, k, num_seeds) if name in params else value).clone()
        for name, value in module.state_dict().items()
    }


def _optimizer_rows(
    optimizer: torch.optim.Optimizer, params: list[nn.Parameter], k: int, num_seeds: int
) -> dict[str, Any]:
    """An Adam state_dict with every per-parameter tensor cut to seed k."""
    saved = optimizer.state_dict()
    state = {}
    for index, param in enumerate(params):
        entries = saved["state"].get(index, {})
        state[index] = {
            name: _seed_rows(v, k, num_seeds).clone() if v.shape == param.shape else v.clone()
            for name, v in entries.items()
        }
    return {"state": state, "param_groups": copy.deepcopy(saved["param_groups"])}


def _load_optimizer_rows(
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    k: int,
    num_seeds: int,
    saved: dict[str, Any],
) -> None:
    for group, saved_group in zip(optimizer.param_groups, saved["param_groups"]):
        group.update({k: v for k, v in saved_group.items() if k != "params"})  # lr, betas
    group = optimizer.param_groups[0]
    for index, param in enumerate(params):
        entries = saved["state"].get(index)
        if not entries:
            continue
        state = optimizer.state[param]
        for name, value in entries.items():
            if value.dim() == 0:  # Adam's step count: the same for every seed
                on_device = group.get("fused") or group.get("capturable")
                state[name] = value.clone().to(param.device if on_device else "cpu")
            else:
                if name not in state:
                    state[name] = torch.zeros_like(param)
                _seed_rows(state[name], k, num_seeds).copy_(value)


Agent = DiffusionQL


# --------------------------------------------------------------------------- entry points


def train(config: DiffusionQLConfig) -> dict[str, Any]:
    """Train Diffusion-QL as configured; returns the contents of result.json."""
    return run_training(config, DiffusionQL, ALGORITHM)


def main(argv: list[str] | None = None) -> int:
    return run_cli(DiffusionQLConfig, train, ALGORITHM, argv)


if __name__ == "__main__":
    sys.exit(main())
