"""Actor heads and small helpers that more than one baseline needs, written once (the trained
behaviour policies that build datasets are elsewhere: dql/policies/).

- `DeterministicActor`: a = max_action * tanh(f(s)) (TD3+BC, BC by MSE, IQL's deterministic
  variant).
- `GaussianActor`: N(mu(s), diag sigma^2) with mu(s) = max_action * tanh(f(s)) and a learned,
  state-independent log sigma; log-likelihood of dataset actions without a tanh correction
  (IQL's public code, Gaussian BC). Acting uses the mean.
- `TanhGaussianActor`: SAC's squashed Gaussian a = max_action * tanh(u), u ~ N(mu(s), sigma(s)),
  reparameterised, with the change-of-variables log-density, initialised as CORL's CQL actor
  (a learned scale and offset on log sigma, a small output layer). One forward pass gives the
  distribution of a state; any number of actions per state are then sampled from it.

Helpers: target networks (`frozen_copy`), CQL's orthogonal init of the critics, batching of
observations for `act`, and `one_pass_is_faster`, which decides whether many sampled actions go
through a network in one pass or in cache-sized passes (CQL's penalty, BCQ's target).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from dql.nets import EnsembleLinear, mlp

LOG_2PI = math.log(2.0 * math.pi)
CPU_CACHE_FLOATS = 2**20  # 4 MB of float32 activations per layer: about what stays in cache


class DeterministicActor(nn.Module):
    """a = max_action * tanh(f(s))."""

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        max_action: float,
        hidden: Sequence[int] = (256, 256),
    ) -> None:
        super().__init__()
        self.net = mlp(observation_dim, action_dim, hidden)
        self.max_action = max_action

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.max_action * torch.tanh(self.net(observations).float())


class GaussianActor(nn.Module):
    """N(max_action * tanh(f(s)), diag exp(log_std)^2), log_std a free parameter per action
    dimension, clamped to `log_std_bounds`."""

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        max_action: float,
        hidden: Sequence[int] = (256, 256),
        log_std_bounds: tuple[float, float] = (-5.0, 2.0),
    ) -> None:
        super().__init__()
        self.net = mlp(observation_dim, action_dim, hidden)
        self.log_std = nn.Parameter(torch.zeros(action_dim))
        self.max_action = max_action
        self.log_std_bounds = log_std_bounds

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        """The mean action (used to act)."""
        return self.max_action * torch.tanh(self.net(observations).float())

    def log_prob(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log pi(a|s), summed over action dimensions: (B,)."""
        log_std = self.log_std.clamp(*self.log_std_bounds)
        z = (actions - self(observations)) * torch.exp(-log_std)
        return (-0.5 * z.square() - log_std - 0.5 * LOG_2PI).sum(-1)


class TanhGaussianActor(nn.Module):
    """SAC's policy as CORL's CQL builds it: u ~ N(mu(s), sigma(s)), a = max_action * tanh(u), with
    log sigma(s) = m f_sigma(s) + b for two learned scalars, m from 1 and b from `log_std_offset`,
    then clamped to `log_std_bounds`. The output layer starts xavier-uniform with gain 1e-2 and
    zero bias, so mu(s) ~ 0 and sigma(s) ~ e^b at first (e^-1 = 0.37 in CORL); the hidden layers
    keep torch's default init."""

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        max_action: float,
        hidden: Sequence[int] = (256, 256, 256),
        log_std_offset: float = -1.0,
        log_std_bounds: tuple[float, float] = (-20.0, 2.0),
    ) -> None:
        super().__init__()
        self.net = mlp(observation_dim, 2 * action_dim, hidden)
        with torch.no_grad():
            nn.init.xavier_uniform_(self.net[-1].weight, gain=1e-2)
            self.net[-1].bias.zero_()
        self.log_std_multiplier = nn.Parameter(torch.tensor(1.0))
        self.log_std_offset = nn.Parameter(torch.tensor(float(log_std_offset)))
        self.max_action = max_action
        self.log_std_bounds = log_std_bounds

    def distribution(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_std) of u, each (B, action_dim)."""
        mean, log_std = self.net(observations).float().chunk(2, dim=-1)  # fp32 under autocast
        log_std = self.log_std_multiplier * log_std + self.log_std_offset
        return mean, log_std.clamp(*self.log_std_bounds)

    def sample(
        self, mean: torch.Tensor, log_std: torch.Tensor, num_samples: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised actions and their log-densities from `distribution`'s output:
        (B, A) and (B,), or (num_samples, B, A) and (num_samples, B)."""
        if num_samples is not None:
            mean = mean.expand(num_samples, *mean.shape)
            log_std = log_std.expand(num_samples, *log_std.shape)
        noise = torch.randn_like(mean)
        u = mean + log_std.exp() * noise
        # log N(u; mu, sigma) - log |d a / d u|, with log(1 - tanh^2 u) = 2 (log 2 - u - softplus(-2u))
        log_prob = (-0.5 * noise.square() - log_std - 0.5 * LOG_2PI).sum(-1)
        log_det = 2.0 * (math.log(2.0) - u - nn.functional.softplus(-2.0 * u))
        log_prob = log_prob - (log_det + math.log(self.max_action)).sum(-1)
        return self.max_action * torch.tanh(u), log_prob

    def forward(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One sampled action per state and its log-density."""
        return self.sample(*self.distribution(observations))

    def deterministic(self, observations: torch.Tensor) -> torch.Tensor:
        """max_action * tanh(mu(s)), used to act at evaluation."""
        mean, _ = self.distribution(observations)
        return self.max_action * torch.tanh(mean)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A target network: a copy of `module` that never receives gradients."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def orthogonal_init_(module: nn.Module, output_gain: float = 1e-2) -> nn.Module:
    """Orthogonal weights (gain sqrt 2) and zero biases for every linear layer of `module`, the
    last one with `output_gain` (CORL's CQL init). Ensemble layers get one matrix per member."""
    layers = [m for m in module.modules() if isinstance(m, (nn.Linear, EnsembleLinear))]
    for index, layer in enumerate(layers):
        gain = output_gain if index == len(layers) - 1 else math.sqrt(2.0)
        matrices = layer.weight if isinstance(layer, EnsembleLinear) else [layer.weight]
        for matrix in matrices:
            nn.init.orthogonal_(matrix, gain=gain)
        layer.bias.zero_()
    return module


def one_pass_is_faster(rows: int, width: int, device: torch.device) -> bool:
    """Whether to run `rows` inputs through layers `width` wide in one pass, rather than in
    passes of fewer rows: always on GPU; on CPU only while one layer's activations (about
    rows x width floats) stay in cache, beyond which smaller passes are ~25-30% faster."""
    return device.type != "cpu" or rows * width <= CPU_CACHE_FLOATS


def observations_tensor(observations: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """A batch of (already normalised) observations as float32 on `device`."""
    return torch.as_tensor(np.asarray(observations, dtype=np.float32), device=device)
