"""Diffuser: "Planning with Diffusion for Flexible Behavior Synthesis" (Janner, Du, Tenenbaum,
Levine, ICML 2022).

A whole trajectory tau = [(a_0, s_0), ..., (a_{H-1}, s_{H-1})] (channels: actions, then states;
both normalised per dimension with dataset statistics) is one sample of a DDPM whose denoiser, a
temporal U-Net, predicts the clean trajectory x0 directly:

    tau_i   = sqrt(abar_i) tau + sqrt(1 - abar_i) eps,   i uniform in 0..T-1, cosine schedule
    L_diff  = E_{i, tau, eps} mean_{h, d} w_{h,d} (x0_theta(C(tau_i), i) - tau)^2_{h,d},
              w = action_weight (10) on a_0's channels, 1 elsewhere

where C(.) writes the known states (s_0, and for goal reaching the goal position in s_{H-1}) into
the trajectory ("inpainting"), before the denoiser and on its output, so known entries cost
nothing. The value model J_phi(tau_i, i) regresses the discounted return-to-go of the window's
first step from the same noisy trajectories, as Diffuser's value diffusion does:

    L_value = E_{i, tau, eps} (J_phi(C(tau_i), i) - sum_{k>=0} gamma^k r_{start+k})^2

Both models see trajectories normalised the same way (`--trajectory-normalizer`: Gaussian for
locomotion, as both of the public code's models now use).

Planning (reverse chain, EMA weights, i = T-1 .. 0), with the known states written back after
every change to the trajectory, so a plan honours them exactly:

    tau <- C(tau) + g * Sigma_i * grad_tau J(C(tau), i)   (guide_steps times; none for i < stop)
    tau <- C(mu_i(x0_theta(tau, i), tau) + sigma_i z),     z ~ N(0, I), no noise at i = 0

with Sigma_i the posterior variance (the paper's "gradient scaled by the variance"). Locomotion:
`num_plans` plans per state, the one with the highest J(tau_0, 0) is kept, its first action is
executed and the agent replans every step (receding horizon). The value model's discount is
0.997, that of the value models the published locomotion plan config loads (its value training
config's own default is 0.99). Goal reaching
(PointMaze): plan once from the current state to the goal and track the plan toward its next
state (pos_w, vel_w) with the published Maze2D rule (its maze2d branch)

    a = (pos_w - pos) + (vel_w - vel)     (vel_w = 0 past the plan's end; clipped to [-M, M])

or, with --waypoint-controller pd, with the rule D4RL's Maze2D data were collected by,
a = kp (pos_w - pos) - kd vel. The published rule follows the planned velocities, so it needs a
planner whose velocities agree with its positions; the small planner of tests/test_diffuser.py,
trained for 800-4000 steps, plans velocities far below its positions' rate of change and reaches
12-31% of that test's goals with it, against 78-81% with pd, which reads positions only.

Observations and goals. With `--goal-size G > 0` (dict-observation goal envs: the flattened
observation is [observation, achieved_goal (G), desired_goal (G)]), the planner's state is the
`observation` part only, the goal is read from the last G entries, and the goal position is the
state's first G entries (position for PointMaze and AntMaze). The harness's observation
normalisation is off by default (`normalize_observations = False`): the planner normalises whole
trajectories itself with statistics from `setup(buffer)`, which is consistent in either case.

Cost: a decision is T denoiser calls (plus 2 value gradients per guided step) on a batch of
num_plans trajectories per env. On one CPU core the paper's locomotion setting (64 plans, H 32,
T 20, base 32) takes about 3 s per decision and trains at about 4 steps/s: locomotion wants a GPU,
or on CPU fewer plans (--num-plans) and a smaller U-Net. One maze plan (H 128, T 20, base 8)
takes about 0.05 s.

Deliberate deviations from the paper and its public code (jannerm/diffuser):
- Diffusion and value model train together, one gradient step each per `update` (public code:
  two separate runs of 1M and 200k steps, batch 32 with 2-step gradient accumulation, which
  `batch_size = 64` matches). `--train-value false` skips the value model (goal reaching).
- The value model is the U-Net's encoder pooled over time (mean) and an MLP head, so it works
  at any planning horizon; public code flattens the last feature map (fixed horizon).
- Windows lie inside episodes (`ReplayBuffer.window_starts`); public code pads terminated
  locomotion episodes with zeros past the end. Returns-to-go of time-limited episodes are cut
  at the episode end without bootstrapping, as in public code.
- Plans are ranked by J(tau_0, i = 0) of the final plans (public code: the value computed
  during the last guidance step).
- Goal conditioning inpaints the goal position only; public code also sets the final velocity
  to zero on Maze2D.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from dql.buffer import Batch, ReplayBuffer
from dql.cli import run_cli
from dql.data import ObservationNormalizer, load_dataset, resolve_ref_scores
from dql.diffusion import cosine_beta_schedule, sinusoidal_embedding
from dql.errors import ConfigError, UserError
from dql.evaluation import evaluate
from dql.nets import hard_update, make_optimizer, polyak_update
from dql.runs import atomic_write_json, read_json, safe_torch_load
from dql.training import (
    Checkpointed,
    TrainConfig,
    fields_with_role,
    resolve_device,
    roles,
    run_training,
    seed_everything,
    spec,
)

ALGORITHM = "diffuser"
Conditioning = Literal["auto", "start", "goal"]
WaypointController = Literal["diffuser", "pd"]
NormalizerKind = Literal["gaussian", "limits"]
# act() takes a jump between two calls larger than this as an env reset (a stale plan): in env
# units of the goal position (PointMaze moves at most 0.05 per step), else in normalised units
# of any state dimension (a spurious detection only replans early).
RESET_JUMP = 0.2
RESET_JUMP_NORMALIZED = 1.0


@dataclass
class Config(TrainConfig):
    """Diffuser (Janner et al. 2022): trajectory diffusion planner with value guidance."""

    batch_size: int = 64
    """Trajectory windows per gradient step (public code: 32 with 2-step accumulation)."""
    eval_interval: int = 100_000
    """Evaluate every this many steps (planning is costly: keep it rare on CPU)."""
    normalize_observations: bool = False
    """Standardise observations in the harness; Diffuser normalises trajectories itself."""
    # ---- model
    horizon: int = field(default=32, metadata=roles("architecture"))
    """Trajectory length H the models are trained on (divisible by 2^(levels-1))."""
    diffusion_steps: int = field(default=20, metadata=spec(">= 1", roles=("architecture",)))
    """Denoising steps T (cosine schedule)."""
    base_channels: int = field(default=32, metadata=spec(">= 1", roles=("architecture",)))
    """U-Net channels at the first level."""
    channel_multipliers: tuple[int, ...] = field(
        default=(1, 2, 4, 8), metadata=spec("widths", roles=("architecture",))
    )
    """Channel multiplier per U-Net level; the time axis halves between levels."""
    trajectory_normalizer: NormalizerKind = field(
        default="gaussian", metadata=roles("architecture")
    )
    """Per-dimension normalisation of states and actions: gaussian (z-score) or limits ([-1, 1])."""
    clip_denoised: bool = field(default=False, metadata=roles("architecture"))
    """Clip the predicted x0 to [-1, 1] at every reverse step (use with limits)."""
    goal_size: int = field(default=0, metadata=spec(">= 0", roles=("architecture",)))
    """Goal-env observations: size G of achieved_goal/desired_goal at the end of the flattened observation (0: none)."""
    # ---- training
    learning_rate: float = field(default=2e-4, metadata=spec("> 0"))
    """Adam learning rate of the diffusion and value models."""
    action_weight: float = field(default=10.0, metadata=spec(">= 0"))
    """Loss weight of the first action's channels."""
    ema_decay: float = field(default=0.995, metadata=spec("[0, 1)"))
    """EMA decay of the weights used for planning."""
    ema_every: int = field(default=10, metadata=spec(">= 1"))
    """Update the EMA every this many steps."""
    ema_start: int = field(default=2000, metadata=spec(">= 0"))
    """Before this step the EMA copies the weights."""
    train_value: bool = field(default=True, metadata=roles("architecture"))
    """Train the value model used for guidance and plan ranking."""
    discount: float = field(default=0.997, metadata=spec("[0, 1]"))
    """Discount gamma of the value model's return-to-go target (the published plan config's 0.997)."""
    termination_penalty: float = -100.0
    """Added to the reward of terminal steps in the value target."""
    # ---- planning (all of these can change at test time without retraining)
    conditioning: Conditioning = "auto"
    """Inpainted states: start (s_0), goal (s_0 and the goal at H-1), auto (goal iff --goal-size > 0)."""
    plan_horizon: int = field(default=0, metadata=spec(">= 0"))
    """Planning horizon (0: --horizon); the U-Net is convolutional, so any multiple of 2^(levels-1)."""
    num_plans: int = field(default=64, metadata=spec(">= 1"))
    """Plans sampled per decision; the one with the highest value is executed."""
    guidance_scale: float = field(default=0.1, metadata=spec(">= 0"))
    """Value-gradient step size g (0: no guidance)."""
    guidance_steps: int = field(default=2, metadata=spec(">= 1"))
    """Gradient steps per denoising step."""
    guidance_stop: int = field(default=2, metadata=spec(">= 0"))
    """No guidance in the last this many denoising steps."""
    replan_interval: int = field(default=1, metadata=spec(">= 0"))
    """Replan every this many env steps (0: once per episode)."""
    waypoint_tracking: bool = False
    """Goal reaching: steer toward the plan's next state instead of executing planned actions."""
    waypoint_controller: WaypointController = "diffuser"
    """diffuser: a = (pos_w - pos) + (vel_w - vel), the published Maze2D rule; pd: a = kp (pos_w - pos) - kd vel, D4RL's data-collection rule."""
    waypoint_kp: float = 10.0
    """--waypoint-controller pd: gain on the position error."""
    waypoint_kd: float = 1.0
    """--waypoint-controller pd: gain on the velocity (damping)."""
    # ---- evaluation of a trained checkpoint
    eval_only: bool = False
    """Evaluate --checkpoint without training (the planning flags above apply)."""
    checkpoint: str | None = None
    """Checkpoint for --eval-only: RUN/checkpoints/last.pt or eval_STEP.pt."""

    def __post_init__(self) -> None:
        self.channel_multipliers = tuple(self.channel_multipliers)  # TOML gives a list

    def validate(self) -> None:
        super().validate()
        if self.conditioning == "goal" and self.goal_size <= 0:
            raise ConfigError("--conditioning goal needs --goal-size > 0 (a goal env)")
        if self.goal_size and self.normalize_observations:
            raise ConfigError(
                "--goal-size needs --normalize-observations false: goals and positions must be "
                "in the same (env) units"
            )
        stride = 2 ** (len(self.channel_multipliers) - 1)
        for name in ("horizon", "plan_horizon"):
            value = getattr(self, name)
            if value % stride or (name == "horizon" and value < stride):
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be a positive multiple of {stride} "
                    f"(2^(levels-1) for {len(self.channel_multipliers)} U-Net levels), got {value}"
                )
        if self.waypoint_tracking and self.goal_size <= 0:
            raise ConfigError("--waypoint-tracking needs --goal-size > 0 (positions to track)")
        if self.eval_only and not self.checkpoint:
            raise ConfigError("--eval-only needs --checkpoint PATH (RUN/checkpoints/last.pt)")


# ----------------------------------------------------------------------------- temporal U-Net


def conv_block(in_channels: int, out_channels: int, kernel_size: int = 5) -> nn.Sequential:
    """Conv1d over time -> GroupNorm -> Mish."""
    return nn.Sequential(
        nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
        nn.GroupNorm(math.gcd(8, out_channels), out_channels),
        nn.Mish(),
    )


class ResidualTemporalBlock(nn.Module):
    """Two conv blocks with the diffusion-time embedding added after the first, plus a skip."""

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.conv_in = conv_block(in_channels, out_channels)
        self.conv_out = conv_block(out_channels, out_channels)
        self.time = nn.Sequential(nn.Mish(), nn.Linear(embed_dim, out_channels))
        self.skip = (
            nn.Conv1d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor, t_embed: torch.Tensor) -> torch.Tensor:
        # x: (N, C_in, H), t_embed: (N, E) -> (N, C_out, H)
        h = self.conv_in(x) + self.time(t_embed)[:, :, None]
        return self.conv_out(h) + self.skip(x)


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of the diffusion step -> Linear(4 dim) -> Mish -> Linear(dim)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.net = nn.Sequential(nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim))

    def forward(self, steps: torch.Tensor) -> torch.Tensor:
        return self.net(sinusoidal_embedding(steps, self.dim))


class TemporalUNet(nn.Module):
    """x0_theta(tau_i, i): (N, H, transition_dim) -> (N, H, transition_dim). Each level has two
    residual blocks; the time axis halves between levels going down and doubles going up, with
    skip connections between levels of the same resolution."""

    def __init__(
        self, transition_dim: int, base_channels: int, channel_multipliers: tuple[int, ...]
    ) -> None:
        super().__init__()
        widths = [transition_dim, *(base_channels * m for m in channel_multipliers)]
        levels = list(zip(widths[:-1], widths[1:]))
        self.time = TimeEmbedding(base_channels)
        self.downs = nn.ModuleList()
        for index, (w_in, w_out) in enumerate(levels):
            last = index == len(levels) - 1
            self.downs.append(
                nn.ModuleList(
                    [
                        ResidualTemporalBlock(w_in, w_out, base_channels),
                        ResidualTemporalBlock(w_out, w_out, base_channels),
                        nn.Identity() if last else nn.Conv1d(w_out, w_out, 3, 2, 1),
                    ]
                )
            )
        self.mid = nn.ModuleList(
            [ResidualTemporalBlock(widths[-1], widths[-1], base_channels) for _ in range(2)]
        )
        self.ups = nn.ModuleList()
        for w_in, w_out in reversed(levels[1:]):
            self.ups.append(
                nn.ModuleList(
                    [
                        ResidualTemporalBlock(2 * w_out, w_in, base_channels),
                        ResidualTemporalBlock(w_in, w_in, base_channels),
                        nn.ConvTranspose1d(w_in, w_in, 4, 2, 1),
                    ]
                )
            )
        self.out = nn.Sequential(
            conv_block(base_channels, base_channels), nn.Conv1d(base_channels, transition_dim, 1)
        )

    def forward(self, x: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        t = self.time(steps)
        h = x.transpose(1, 2)  # (N, C, H): convolutions run over time
        skips = []
        for block1, block2, down in self.downs:
            h = block2(block1(h, t), t)
            skips.append(h)
            h = down(h)
        for block in self.mid:
            h = block(h, t)
        for block1, block2, up in self.ups:
            h = block2(block1(torch.cat([h, skips.pop()], dim=1), t), t)
            h = up(h)
        return self.out(h).transpose(1, 2)


class TrajectoryValue(nn.Module):
    """J_phi(tau_i, i): the U-Net's encoder, mean over time, then an MLP: (N, H, C) -> (N,)."""

    def __init__(
        self, transition_dim: int, base_channels: int, channel_multipliers: tuple[int, ...]
    ) -> None:
        super().__init__()
        widths = [transition_dim, *(base_channels * m for m in channel_multipliers)]
        self.time = TimeEmbedding(base_channels)
        self.blocks = nn.ModuleList(
            nn.ModuleList(
                [
                    ResidualTemporalBlock(w_in, w_out, base_channels),
                    ResidualTemporalBlock(w_out, w_out, base_channels),
                    nn.Conv1d(w_out, w_out, 3, 2, 1),
                ]
            )
            for w_in, w_out in zip(widths[:-1], widths[1:])
        )
        self.head = nn.Sequential(
            nn.Linear(widths[-1] + base_channels, widths[-1] // 2 or 1),
            nn.Mish(),
            nn.Linear(widths[-1] // 2 or 1, 1),
        )

    def forward(self, x: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        t = self.time(steps)
        h = x.transpose(1, 2)
        for block1, block2, down in self.blocks:
            h = down(block2(block1(h, t), t))
        return self.head(torch.cat([h.mean(dim=2), t], dim=-1)).squeeze(-1)


# ----------------------------------------------------------------------------- diffusion


class TrajectoryDiffusion(nn.Module):
    """Cosine-schedule DDPM over normalised trajectories with x0 prediction; the networks are
    passed in, so the same schedule serves the trained and the EMA weights."""

    def __init__(self, num_steps: int, clip_denoised: bool) -> None:
        super().__init__()
        self.num_steps = num_steps
        self.clip_denoised = clip_denoised
        betas = cosine_beta_schedule(num_steps)
        alphas = 1.0 - betas
        abar = np.cumprod(alphas)
        abar_prev = np.concatenate([[1.0], abar[:-1]])
        posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)

        def buffer(name: str, values: np.ndarray) -> None:
            self.register_buffer(name, torch.as_tensor(values, dtype=torch.float32))

        buffer("sqrt_alphas_cumprod", np.sqrt(abar))
        buffer("sqrt_one_minus_alphas_cumprod", np.sqrt(1.0 - abar))
        buffer("posterior_mean_coef1", betas * np.sqrt(abar_prev) / (1.0 - abar))
        buffer("posterior_mean_coef2", (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar))
        buffer("posterior_variance", posterior_variance)  # exactly 0 at i = 0
        buffer("posterior_std", np.sqrt(posterior_variance))

    def q_sample(self, x0: torch.Tensor, steps: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """tau_i = sqrt(abar_i) tau + sqrt(1 - abar_i) eps, per-row steps (N,)."""
        return (
            self.sqrt_alphas_cumprod[steps, None, None] * x0
            + self.sqrt_one_minus_alphas_cumprod[steps, None, None] * noise
        )

    def sample(
        self,
        denoiser: nn.Module,
        known: torch.Tensor,
        known_values: torch.Tensor,
        *,
        value: nn.Module | None = None,
        guidance_scale: float = 0.0,
        guidance_steps: int = 2,
        guidance_stop: int = 2,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Plans (N, H, C) by the reverse chain, with the `known` entries (bool, broadcastable to
        (N, H, C)) set to `known_values` after every change: they hold exactly in the result."""

        def inpaint(x: torch.Tensor) -> torch.Tensor:
            return torch.where(known, known_values, x)

        shape, device = known_values.shape, known_values.device
        x = inpaint(torch.randn(shape, device=device, generator=generator))
        guided = value is not None and guidance_scale > 0
        for i in reversed(range(self.num_steps)):
            steps = torch.full((shape[0],), i, device=device, dtype=torch.long)
            if guided and i >= guidance_stop:
                for _ in range(guidance_steps):
                    with torch.enable_grad():
                        x_grad = x.detach().requires_grad_(True)
                        (grad,) = torch.autograd.grad(value(x_grad, steps).sum(), x_grad)
                    x = inpaint(x + guidance_scale * self.posterior_variance[i] * grad)
            x0 = denoiser(x, steps)
            if self.clip_denoised:
                x0 = x0.clamp(-1.0, 1.0)
            x = self.posterior_mean_coef1[i] * x0 + self.posterior_mean_coef2[i] * x
            if i > 0:
                noise = torch.randn(shape, device=device, generator=generator)
                x = x + self.posterior_std[i] * noise
            x = inpaint(x)
        return x


class TrajectoryNormalizer(nn.Module):
    """Per-channel (x - shift) / scale over [actions, states]: z-score (gaussian) or min-max to
    [-1, 1] (limits), with statistics from the dataset."""

    def __init__(self, transition_dim: int) -> None:
        super().__init__()
        self.register_buffer("shift", torch.zeros(transition_dim))
        self.register_buffer("scale", torch.ones(transition_dim))

    @torch.no_grad()
    def fit(self, transitions: torch.Tensor, kind: str) -> None:
        if kind == "gaussian":
            shift, scale = transitions.mean(0), transitions.std(0)
        else:
            low, high = transitions.min(0).values, transitions.max(0).values
            shift, scale = (high + low) / 2, (high - low) / 2
        self.shift.copy_(shift)
        self.scale.copy_(scale.clamp(min=1e-6))  # constant channels map to 0

    def normalize(self, x: torch.Tensor, channels: slice = slice(None)) -> torch.Tensor:
        return (x - self.shift[channels]) / self.scale[channels]

    def unnormalize(self, x: torch.Tensor, channels: slice = slice(None)) -> torch.Tensor:
        return x * self.scale[channels] + self.shift[channels]


def discounted_returns_to_go(
    rewards: np.ndarray, episode_ends: np.ndarray, discount: float
) -> np.ndarray:
    """sum_{k>=0} gamma^k r_{t+k} up to the end of t's episode, for every index t."""
    out = np.empty(len(rewards), np.float64)
    is_last = np.zeros(len(rewards), bool)
    is_last[np.asarray(episode_ends) - 1] = True
    running = 0.0
    for t, (r, last) in enumerate(zip(rewards[::-1].tolist(), is_last[::-1].tolist())):
        running = r + (0.0 if last else discount * running)
        out[len(rewards) - 1 - t] = running
    return out


def track_waypoint(
    position: np.ndarray,
    velocity: np.ndarray,
    waypoint_position: np.ndarray,
    waypoint_velocity: np.ndarray,
    controller: str,
    kp: float = 10.0,
    kd: float = 1.0,
) -> np.ndarray:
    """The action toward a waypoint (batched, unclipped). `diffuser`, the published Maze2D rule:
    a = (pos_w - pos) + (vel_w - vel); `pd`, D4RL's data-collection rule:
    a = kp (pos_w - pos) - kd vel."""
    if controller == "diffuser":
        return (waypoint_position - position) + (waypoint_velocity - velocity)
    return kp * (waypoint_position - position) - kd * velocity


# ----------------------------------------------------------------------------- planner / agent


@dataclass
class Plan:
    """Plans in env units: states (B, H, S), actions (B, H, A), values (B,) or None."""

    states: torch.Tensor
    actions: torch.Tensor
    values: torch.Tensor | None


class Diffuser(Checkpointed):
    """Agent: trains the trajectory diffusion and value models; acts by planning."""

    extra_state = ("updates",)

    selection_metric = "diffusion_loss"

    def __init__(
        self, observation_dim: int, action_dim: int, max_action: float, config: Config
    ) -> None:
        c = self.config = config
        self.device = torch.device(resolve_device(config.device))
        self.max_action = max_action
        self.action_dim = action_dim
        self.goal_size = c.goal_size
        self.state_dim = observation_dim - 2 * c.goal_size
        if self.state_dim < c.goal_size or self.state_dim <= 0:
            raise ConfigError(
                f"--goal-size {c.goal_size} does not fit observations of size {observation_dim} "
                "([observation, achieved_goal, desired_goal] expected)"
            )
        self.transition_dim = action_dim + self.state_dim
        self.states = slice(action_dim, self.transition_dim)  # channels of s in tau
        self.goal_channels = slice(action_dim, action_dim + c.goal_size)
        widths = (c.base_channels, c.channel_multipliers)
        self.denoiser = TemporalUNet(self.transition_dim, *widths).to(self.device)
        self.ema_denoiser = copy.deepcopy(self.denoiser).requires_grad_(False)
        self.diffusion = TrajectoryDiffusion(c.diffusion_steps, c.clip_denoised).to(self.device)
        self.normalizer = TrajectoryNormalizer(self.transition_dim).to(self.device)
        parameters = list(self.denoiser.parameters())
        self.value = self.ema_value = None
        if c.train_value:
            self.value = TrajectoryValue(self.transition_dim, *widths).to(self.device)
            self.ema_value = copy.deepcopy(self.value).requires_grad_(False)
            parameters += list(self.value.parameters())
        self.optimizer = make_optimizer(parameters, c.learning_rate)
        weights = torch.ones(c.horizon, self.transition_dim, device=self.device)
        weights[0, :action_dim] = c.action_weight
        self.loss_weights = weights
        self.returns_to_go: torch.Tensor | None = None
        self.updates = 0
        # per-env planning state of act()
        self._plan: Plan | None = None
        self._since_plan = np.zeros(0, np.int64)
        self._previous: np.ndarray | None = None

    # -- data
    def setup(self, buffer: ReplayBuffer) -> None:
        """Normaliser statistics and, for the value target, per-index returns-to-go."""
        c = self.config
        buffer.window_starts(c.horizon)  # fails now if no episode is long enough
        transitions = torch.cat([buffer.actions, buffer.observations[:, : self.state_dim]], -1)
        self.normalizer.fit(transitions, c.trajectory_normalizer)
        if self.value is not None:
            rewards = (buffer.rewards + c.termination_penalty * buffer.terminals).cpu().numpy()
            returns = discounted_returns_to_go(rewards, buffer.episode_ends, c.discount)
            self.returns_to_go = torch.as_tensor(returns, dtype=torch.float32, device=self.device)

    def sample_batch(self, buffer: ReplayBuffer, batch_size: int) -> Batch:
        """Windows of `horizon` steps inside episodes (drawn as `sample_windows` draws them,
        keeping the start index for the return-to-go target)."""
        starts = buffer.window_starts(self.config.horizon)
        pick = torch.randint(
            0, len(starts), (batch_size,), generator=buffer.generator, device=buffer.device
        )
        first = starts[pick]
        index = first[:, None] + torch.arange(self.config.horizon, device=buffer.device)
        batch = {"observations": buffer.observations[index], "actions": buffer.actions[index]}
        if self.returns_to_go is not None:
            batch["values"] = self.returns_to_go[first]
        return batch

    def trajectories(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Normalised tau (B, H, A + S) from env-unit windows."""
        return self.normalizer.normalize(
            torch.cat([actions, observations[..., : self.state_dim]], dim=-1)
        )

    def known_mask(self, horizon: int, conditioning: str) -> torch.Tensor:
        """Inpainted entries (H, C): all of s_0; the goal position in s_{H-1} for goal mode."""
        known = torch.zeros(horizon, self.transition_dim, dtype=torch.bool, device=self.device)
        known[0, self.states] = True
        if self._goal_mode(conditioning):
            known[horizon - 1, self.goal_channels] = True
        return known

    def _goal_mode(self, conditioning: str) -> bool:
        return conditioning == "goal" or (conditioning == "auto" and self.goal_size > 0)

    # -- the losses
    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        c = self.config
        x0 = self.trajectories(batch["observations"], batch["actions"])  # (B, H, C)
        known = self.known_mask(c.horizon, c.conditioning)
        steps = torch.randint(0, c.diffusion_steps, (x0.shape[0],), device=self.device)
        x_noisy = torch.where(known, x0, self.diffusion.q_sample(x0, steps, torch.randn_like(x0)))
        x0_hat = torch.where(known, x0, self.denoiser(x_noisy, steps))
        squared_error = (x0_hat - x0).square()
        diffusion_loss = (self.loss_weights * squared_error).mean()
        loss = diffusion_loss
        metrics = {
            "diffusion_loss": diffusion_loss.detach(),
            "first_action_error": squared_error[:, 0, : self.action_dim].mean().detach(),
        }
        if self.value is not None:
            value_loss = (self.value(x_noisy, steps) - batch["values"]).square().mean()
            loss = loss + value_loss
            metrics["value_loss"] = value_loss.detach()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

        self.updates += 1
        if self.updates % c.ema_every == 0:
            for ema, model in ((self.ema_denoiser, self.denoiser), (self.ema_value, self.value)):
                if model is None:
                    continue
                if self.updates < c.ema_start:
                    hard_update(ema, model)
                else:
                    polyak_update(ema, model, 1.0 - c.ema_decay)
        return metrics

    # -- planning
    @torch.no_grad()
    def plan(
        self,
        observations: torch.Tensor | np.ndarray,
        *,
        num_plans: int | None = None,
        horizon: int | None = None,
        guidance_scale: float | None = None,
        conditioning: str | None = None,
        generator: torch.Generator | None = None,
    ) -> Plan:
        """The best of `num_plans` guided plans from each observation (B, obs_dim), in env units,
        with the current state at t = 0 (and the goal at t = H-1 in goal mode) exactly."""
        c = self.config
        num_plans = num_plans or c.num_plans
        horizon = horizon or c.plan_horizon or c.horizon
        scale = c.guidance_scale if guidance_scale is None else guidance_scale
        conditioning = conditioning or c.conditioning
        obs = torch.as_tensor(observations, dtype=torch.float32, device=self.device)
        batch = obs.shape[0]
        states = obs[:, : self.state_dim]
        known = self.known_mask(horizon, conditioning)
        values = torch.zeros(batch, horizon, self.transition_dim, device=self.device)
        values[:, 0, self.states] = self.normalizer.normalize(states, self.states)
        goal_mode = self._goal_mode(conditioning)
        if goal_mode:
            goals = obs[:, -self.goal_size :]
            values[:, -1, self.goal_channels] = self.normalizer.normalize(goals, self.goal_channels)
        # (B * P, H, C): the plans of one env are consecutive rows
        values = values.repeat_interleave(num_plans, dim=0)
        x = self.diffusion.sample(
            self.ema_denoiser,
            known,
            values,
            value=self.ema_value,
            guidance_scale=scale,
            guidance_steps=c.guidance_steps,
            guidance_stop=c.guidance_stop,
            generator=generator,
        )
        plan_values = None
        best = torch.zeros(batch, dtype=torch.long, device=self.device)
        if self.ema_value is not None:
            zero = torch.zeros(len(x), dtype=torch.long, device=self.device)
            plan_values = self.ema_value(x, zero).view(batch, num_plans)
            best = plan_values.argmax(dim=1)
            plan_values = plan_values.gather(1, best[:, None]).squeeze(1)
        x = x.view(batch, num_plans, horizon, -1)[torch.arange(batch), best]
        x = self.normalizer.unnormalize(x)
        plan_states, plan_actions = x[..., self.states], x[..., : self.action_dim]
        plan_states[:, 0] = states  # exact in env units, not only in normalised units
        if goal_mode:
            plan_states[:, -1, : self.goal_size] = goals
        plan_actions = plan_actions.clamp(-self.max_action, self.max_action)
        return Plan(plan_states, plan_actions, plan_values)

    def _new_episodes(self, observations: np.ndarray) -> np.ndarray:
        """Envs whose episode (or goal) changed since the last call: their plans are stale."""
        if self._previous is None or self._previous.shape != observations.shape:
            return np.ones(len(observations), bool)
        if self.goal_size:
            goal_changed = np.any(
                observations[:, -self.goal_size :] != self._previous[:, -self.goal_size :], axis=1
            )
            moved = np.abs(
                observations[:, : self.goal_size] - self._previous[:, : self.goal_size]
            ).max(1)
            return goal_changed | (moved > RESET_JUMP)
        states = torch.as_tensor(np.stack([observations, self._previous]), device=self.device)
        states = self.normalizer.normalize(states[..., : self.state_dim], self.states)
        return (states[0] - states[1]).abs().amax(1).cpu().numpy() > RESET_JUMP_NORMALIZED

    @torch.no_grad()
    def act(self, observations: np.ndarray) -> np.ndarray:
        """Batched receding-horizon control: replan the envs that are due, then execute the
        current plan's action (or track its next waypoint)."""
        c = self.config
        observations = np.asarray(observations, np.float32)
        fresh = self._new_episodes(observations)
        if fresh.all() or self._plan is None:
            self._since_plan = np.zeros(len(observations), np.int64)
            due = np.ones(len(observations), bool)
        else:
            interval = c.replan_interval
            due = fresh | ((self._since_plan >= interval) if interval > 0 else False)
        if due.any():
            plan = self.plan(observations[due])
            if self._plan is None or due.all():
                self._plan = plan
            else:
                index = torch.as_tensor(np.flatnonzero(due), device=self.device)
                self._plan.states[index] = plan.states
                self._plan.actions[index] = plan.actions
            self._since_plan[due] = 0
        self._previous = observations.copy()
        horizon = self._plan.states.shape[1]
        rows = np.arange(len(observations))
        if c.waypoint_tracking:  # toward the plan's next state: position (G), velocity (G)
            g = self.goal_size
            k = np.minimum(self._since_plan + 1, horizon - 1)
            waypoints = self._plan.states[rows, k, : 2 * g].cpu().numpy()
            waypoints[self._since_plan >= horizon - 1, g:] = 0.0  # past the plan's end: stop there
            actions = track_waypoint(
                observations[:, :g],
                observations[:, g : 2 * g],
                waypoints[:, :g],
                waypoints[:, g:],
                c.waypoint_controller,
                c.waypoint_kp,
                c.waypoint_kd,
            )
        else:
            k = np.minimum(self._since_plan, horizon - 1)
            actions = self._plan.actions[rows, k].cpu().numpy()
        self._since_plan += 1
        return np.clip(actions, -self.max_action, self.max_action).astype(np.float32)

    def reset(self) -> None:
        """Forget the per-env plans (the next act() plans afresh)."""
        self._plan, self._previous = None, None

    # -- checkpoints (dql.checkpoint.Checkpointed: the modules, the optimiser, `updates`)
    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.reset()  # a plan made before the load belongs to other weights


# ----------------------------------------------------------------------------- entry points


def evaluate_checkpoint(config: Config) -> dict[str, Any]:
    """--eval-only: plan with a trained checkpoint and the current planning flags; the result
    goes to RUN_DIR/eval_only.json (--run-dir) or next to the checkpoint."""
    config.validate()
    device = resolve_device(config.device)
    checkpoint = Path(config.checkpoint)
    state = safe_torch_load(checkpoint, map_location=device)
    agent_state = state.get("agent", state)
    run_config = checkpoint.resolve().parent.parent / "config.json"
    saved = read_json(run_config) if run_config.exists() else None
    if saved is not None:  # the weights' shapes come from the run that made them
        architecture = fields_with_role(Config, "architecture")  # shapes and meaning of weights
        arch = {k: saved["config"][k] for k in architecture if k in saved["config"]}
        config = dataclasses.replace(config, **arch)
        config.validate()
    data = load_dataset(config.dataset, download=config.download, env_id=config.env_id)
    info = data.info
    ref_scores = resolve_ref_scores(info, config.ref_min_score, config.ref_max_score)
    if saved is not None:
        normalizer = ObservationNormalizer.from_state_dict(saved["normalizer"])
    elif config.normalize_observations:
        normalizer = ObservationNormalizer.from_data(data.observations)
    else:
        normalizer = ObservationNormalizer.identity(info.observation_dim)
    del data
    max_action = float(info.action_high.flat[0])
    agent = Diffuser(
        info.observation_dim,
        info.action_dim,
        max_action,
        dataclasses.replace(config, device=device),
    )
    try:
        agent.load_state_dict(agent_state)
    except (KeyError, RuntimeError) as exc:
        raise UserError(
            f"{checkpoint}: does not fit this Diffuser ({str(exc).splitlines()[0][:160]}); pass "
            "the architecture flags the run was trained with"
        ) from None
    seed_everything(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.eval_seed)
        result = evaluate(
            agent.act,
            info,
            num_episodes=config.eval_episodes,
            seed=config.eval_seed,
            normalizer=normalizer,
            ref_scores=ref_scores,
            env_id=config.env_id,
            max_episode_steps=config.max_episode_steps,
            progress=config.progress,
        )
    score = float(result.normalized_score)
    out = {
        "algorithm": ALGORITHM,
        "dataset": config.dataset,
        "seed": config.seed,
        "checkpoint": str(checkpoint),
        "updates": agent.updates,
        "final_score": score,
        "best_score": score,
        "best_step": agent.updates,
        "return": result.mean_return,
        "planning": {
            k: getattr(config, k)
            for k in (
                "conditioning",
                "plan_horizon",
                "num_plans",
                "guidance_scale",
                "guidance_steps",
                "guidance_stop",
                "replan_interval",
                "waypoint_tracking",
                "waypoint_controller",
            )
        },
        "episodes": result.episodes(),
    }
    target = (
        Path(config.run_dir) / "eval_only.json"
        if config.run_dir
        else checkpoint.with_name(checkpoint.stem + ".eval.json")
    )
    atomic_write_json(target, out)
    return out


Agent = Diffuser  # the registry's agent class of this algorithm


def train(config: Config) -> dict[str, Any]:
    if config.eval_only:
        return evaluate_checkpoint(config)
    return run_training(config, Diffuser, ALGORITHM)


def main(argv: list[str] | None = None) -> int:
    return run_cli(Config, train, ALGORITHM, argv)


if __name__ == "__main__":
    sys.exit(main())
