"""Model-predictive control through a learned dynamics model: the classical sampling planners
CEM (cross-entropy method) and MPPI over action sequences, on the same data as Diffuser, so a
user can see what Diffuser's trajectory prior adds over "learn a model, then optimise actions".

Model: an ensemble of K MLPs f_k(s, a) -> (s' - s, r, d) on standardised inputs and targets
(statistics from the dataset), each member trained on its own minibatch:

    L = sum_k E [ ||f_k^{ds, r}(s, a) - (s' - s, r)||^2 (standardised) + BCE(f_k^d(s, a), terminal) ]

The termination head is an addition to the usual (s' - s, r) model: without it a planner cannot
tell that falling over ends the reward stream (Hopper, Walker2d, InvertedPendulum).

Planning, per env and step: candidate action sequences a_{0:H-1} ~ N(mu, sigma^2) (clipped to
the action bounds) are rolled out from the current state by every member; a sequence scores

    R = mean_k sum_t gamma^t r_t^k prod_{t' < t} (1 - p_{t'}^k),   p = sigmoid(d)

- CEM: mu, sigma <- (1 - m) * (mean, std of the `elites` best) + m * (mu, sigma), `iterations`
  times (m = `momentum`);
- MPPI: mu <- sum_j w_j a^j, w = softmax(R_j / (temperature * std(R))), `iterations` times.

The first action of mu is executed and mu, shifted by one step, warm-starts the next decision
(receding horizon, replanning every step). Deliberate choices: expected return over members (no
PETS particle propagation), no model-uncertainty penalty (the offline MOPO/MOReL pessimism is
left out, so this is the plain planner), acting with mu[0] rather than the best sample.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch.nn import functional as F

from dql.buffer import Batch, ReplayBuffer
from dql.cli import run_cli
from dql.errors import ConfigError
from dql.nets import Activation, EnsembleMLP, make_optimizer
from dql.training import Checkpointed, TrainConfig, resolve_device, run_training, spec

ALGORITHM = "mpc"
Planner = Literal["cem", "mppi"]


@dataclass
class Config(TrainConfig):
    """MPC with CEM or MPPI through a learned dynamics-model ensemble."""

    steps: int = 100_000
    """Gradient steps of the dynamics model."""
    eval_interval: int = 25_000
    """Evaluate every this many steps (planning is costly)."""
    # ---- model
    ensemble_size: int = field(default=5, metadata=spec(">= 1"))
    """Dynamics models K in the ensemble."""
    hidden: tuple[int, ...] = field(default=(256, 256, 256), metadata=spec("widths"))
    """Hidden widths of each member."""
    activation: Activation = "relu"
    """Hidden activation (relu, mish, tanh, elu, gelu)."""
    learning_rate: float = field(default=1e-3, metadata=spec("> 0"))
    """Adam learning rate of the ensemble."""
    weight_decay: float = field(default=1e-5, metadata=spec(">= 0"))
    """Adam L2 weight decay."""
    # ---- planning (can change at test time without retraining)
    planner: Planner = "cem"
    """cem or mppi."""
    plan_horizon: int = field(default=15, metadata=spec(">= 1"))
    """Steps H of each action sequence."""
    population: int = field(default=400, metadata=spec(">= 1"))
    """Candidate sequences per iteration."""
    elites: int = field(default=40, metadata=spec(">= 1"))
    """CEM: sequences the distribution is refitted to."""
    iterations: int = field(default=4, metadata=spec(">= 1"))
    """Refits of the sampling distribution per decision."""
    init_std: float = field(default=0.5, metadata=spec("> 0"))
    """Initial sampling std, as a fraction of max_action."""
    momentum: float = field(default=0.1, metadata=spec("[0, 1)"))
    """CEM: weight of the previous mean/std in each refit."""
    temperature: float = field(default=0.5, metadata=spec("> 0"))
    """MPPI: softmax temperature, in units of the candidates' return std."""
    discount: float = field(default=0.99, metadata=spec("[0, 1]"))
    """Discount of the planned return."""

    def __post_init__(self) -> None:
        self.hidden = tuple(self.hidden)

    def validate(self) -> None:
        super().validate()
        if self.elites > self.population:
            raise ConfigError(
                f"--elites ({self.elites}) must not exceed --population ({self.population})"
            )


class ModelPredictiveControl(Checkpointed):
    """Agent: fits the ensemble in `update`, plans with CEM/MPPI in `act`."""

    extra_state = ("stats",)  # the dynamics-normaliser statistics

    def __init__(
        self, observation_dim: int, action_dim: int, max_action: float, config: Config
    ) -> None:
        c = self.config = config
        self.device = torch.device(resolve_device(config.device))
        self.observation_dim, self.action_dim = observation_dim, action_dim
        self.max_action = max_action
        self.model = EnsembleMLP(
            observation_dim + action_dim,
            observation_dim + 2,
            c.ensemble_size,
            c.hidden,
            c.activation,
        ).to(self.device)
        self.optimizer = make_optimizer(
            self.model.parameters(), c.learning_rate, weight_decay=c.weight_decay
        )
        zeros = lambda n: torch.zeros(n, device=self.device)  # noqa: E731
        ones = lambda n: torch.ones(n, device=self.device)  # noqa: E731
        # standardisation of inputs (s, a) and targets (s' - s, r)
        self.stats = {
            "input_mean": zeros(observation_dim + action_dim),
            "input_std": ones(observation_dim + action_dim),
            "target_mean": zeros(observation_dim + 1),
            "target_std": ones(observation_dim + 1),
        }
        self._warm_start: torch.Tensor | None = None  # (B, H, A) shifted mean of the last plan

    def setup(self, buffer: ReplayBuffer) -> None:
        inputs = torch.cat([buffer.observations, buffer.actions], -1)
        targets = torch.cat(
            [buffer.next_observations - buffer.observations, buffer.rewards[:, None]], -1
        )
        self.stats = {
            "input_mean": inputs.mean(0),
            "input_std": inputs.std(0).clamp(min=1e-6),
            "target_mean": targets.mean(0),
            "target_std": targets.std(0).clamp(min=1e-6),
        }

    def sample_batch(self, buffer: ReplayBuffer, batch_size: int) -> Batch:
        """An independent minibatch per member: every field gets a leading (K,) axis."""
        k = self.config.ensemble_size
        batch = buffer.sample(k * batch_size)
        return {name: x.view(k, batch_size, *x.shape[1:]) for name, x in batch.items()}

    def predict(
        self, observations: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per member: next states, rewards and termination logits from (K, N, .) inputs."""
        s = self.stats
        inputs = (torch.cat([observations, actions], -1) - s["input_mean"]) / s["input_std"]
        out = self.model(inputs)
        delta_reward = out[..., :-1] * s["target_std"] + s["target_mean"]
        return observations + delta_reward[..., :-1], delta_reward[..., -1], out[..., -1]

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        s = self.stats
        inputs = torch.cat([batch["observations"], batch["actions"]], -1)
        targets = torch.cat(
            [batch["next_observations"] - batch["observations"], batch["rewards"][..., None]], -1
        )
        out = self.model((inputs - s["input_mean"]) / s["input_std"])  # (K, B, S + 2)
        normalised_targets = (targets - s["target_mean"]) / s["target_std"]
        model_loss = (out[..., :-1] - normalised_targets).square().mean()
        done_loss = F.binary_cross_entropy_with_logits(out[..., -1], batch["terminals"])
        loss = self.config.ensemble_size * (model_loss + done_loss)  # sum over members
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"model_loss": model_loss.detach(), "done_loss": done_loss.detach()}

    @torch.no_grad()
    def plan_returns(self, observations: torch.Tensor, sequences: torch.Tensor) -> torch.Tensor:
        """Expected discounted return of each sequence: observations (B, S), sequences
        (B, P, H, A) -> (B, P), averaged over the ensemble."""
        c = self.config
        batch, population, horizon, _ = sequences.shape
        k = c.ensemble_size
        state = observations.repeat_interleave(population, 0).expand(k, -1, -1)  # (K, B*P, S)
        flat = sequences.reshape(batch * population, horizon, -1)
        total = torch.zeros(k, batch * population, device=self.device)
        alive = torch.ones_like(total)
        for t in range(horizon):
            action = flat[:, t].expand(k, -1, -1)
            state, reward, done_logit = self.predict(state, action)
            total = total + (c.discount**t) * alive * reward
            alive = alive * (1.0 - torch.sigmoid(done_logit))
        return total.mean(0).view(batch, population)

    @torch.no_grad()
    def act(self, observations: np.ndarray) -> np.ndarray:
        c = self.config
        obs = torch.as_tensor(np.asarray(observations, np.float32), device=self.device)
        batch, shape = obs.shape[0], (obs.shape[0], c.plan_horizon, self.action_dim)
        if self._warm_start is None or self._warm_start.shape != shape:
            self._warm_start = torch.zeros(shape, device=self.device)
        mean = self._warm_start
        std = torch.full(shape, c.init_std * self.max_action, device=self.device)
        for _ in range(c.iterations):
            noise = torch.randn(batch, c.population, *shape[1:], device=self.device)
            candidates = (mean[:, None] + std[:, None] * noise).clamp(
                -self.max_action, self.max_action
            )  # (B, P, H, A)
            returns = self.plan_returns(obs, candidates)  # (B, P)
            if c.planner == "cem":
                top = returns.topk(c.elites, dim=1).indices
                elites = candidates[torch.arange(batch)[:, None], top]  # (B, E, H, A)
                mean = c.momentum * mean + (1 - c.momentum) * elites.mean(1)
                std = c.momentum * std + (1 - c.momentum) * elites.std(1, unbiased=False)
            else:
                spread = returns.std(1, keepdim=True).clamp(min=1e-6)
                weights = torch.softmax(returns / (c.temperature * spread), dim=1)
                mean = (weights[..., None, None] * candidates).sum(1)
        self._warm_start = torch.cat([mean[:, 1:], torch.zeros_like(mean[:, :1])], dim=1)
        return mean[:, 0].clamp(-self.max_action, self.max_action).cpu().numpy()

    def reset(self) -> None:
        self._warm_start = None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.reset()  # a warm start from before the load would plan from stale actions


Agent = ModelPredictiveControl  # the registry's agent class of this algorithm


def train(config: Config) -> dict[str, Any]:
    return run_training(config, ModelPredictiveControl, ALGORITHM)


def main(argv: list[str] | None = None) -> int:
    return run_cli(Config, train, ALGORITHM, argv)


if __name__ == "__main__":
    sys.exit(main())
