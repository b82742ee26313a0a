"""Replay buffer: the whole dataset as contiguous tensors on one device.

Sampling is uniform with a seeded `torch.Generator` (saved and restored with checkpoints, so a
resumed run draws the same batches), one indexing op per field: no DataLoader, no per-sample
Python. `sample_windows` draws fixed-length windows inside episodes for trajectory models.
"""

from __future__ import annotations

import numpy as np
import torch

from dql.data import ObservationNormalizer, Transitions
from dql.errors import ConfigError

Batch = dict[str, torch.Tensor]


class ReplayBuffer:
    """Transitions on `device`. Batch keys: observations (B, obs_dim), actions (B, act_dim),
    rewards (B,), next_observations (B, obs_dim), terminals (B,) as float 0/1."""

    def __init__(
        self,
        transitions: Transitions,
        *,
        device: str | torch.device = "cpu",
        seed: int = 0,
        normalizer: ObservationNormalizer | None = None,
        rewards: np.ndarray | None = None,
    ) -> None:
        self.device = torch.device(device)
        normalize = normalizer if normalizer is not None else (lambda x: x)
        rewards = transitions.rewards if rewards is None else rewards

        def put(array: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(array), device=self.device)

        self.observations = put(normalize(transitions.observations))
        self.next_observations = put(normalize(transitions.next_observations))
        self.actions = put(transitions.actions)
        self.rewards = put(rewards.astype(np.float32))
        self.terminals = put(transitions.terminals)
        self.timeouts = put(transitions.timeouts)
        self.episode_ids = put(transitions.episode_ids)
        self.size = len(transitions)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        ids = transitions.episode_ids
        boundaries = np.flatnonzero(np.diff(ids)) + 1
        self.episode_starts = np.concatenate([[0], boundaries]).astype(np.int64)
        self.episode_ends = np.concatenate([boundaries, [len(ids)]]).astype(np.int64)
        self._window_starts: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.size

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        """A uniform batch of transitions (with replacement)."""
        index = torch.randint(
            0, self.size, (batch_size,), generator=generator or self.generator, device=self.device
        )
        return {
            "observations": self.observations[index],
            "actions": self.actions[index],
            "rewards": self.rewards[index],
            "next_observations": self.next_observations[index],
            "terminals": self.terminals[index],
        }

    def window_starts(self, horizon: int) -> torch.Tensor:
        """Start indices of all windows of `horizon` steps lying inside one episode."""
        if horizon < 1:
            raise ConfigError(f"window horizon must be >= 1, got {horizon}")
        if horizon not in self._window_starts:
            lengths = self.episode_ends - self.episode_starts
            starts = [
                np.arange(s, e - horizon + 1)
                for s, e, n in zip(self.episode_starts, self.episode_ends, lengths)
                if n >= horizon
            ]
            if not starts:
                raise ConfigError(
                    f"no episode has {horizon} steps (longest has {int(lengths.max())}); "
                    "use a shorter horizon"
                )
            self._window_starts[horizon] = torch.as_tensor(
                np.concatenate(starts), device=self.device
            )
        return self._window_starts[horizon]

    def sample_windows(self, batch_size: int, horizon: int) -> Batch:
        """A batch of windows: observations (B, H, obs_dim), actions (B, H, act_dim), rewards,
        terminals (B, H), each window within a single episode."""
        starts = self.window_starts(horizon)
        pick = torch.randint(
            0, len(starts), (batch_size,), generator=self.generator, device=self.device
        )
        index = starts[pick, None] + torch.arange(horizon, device=self.device)  # (B, H)
        return {
            "observations": self.observations[index],
            "actions": self.actions[index],
            "rewards": self.rewards[index],
            "terminals": self.terminals[index],
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        # generator states are CPU byte tensors, even for CUDA generators (map_location moves them)
        self.generator.set_state(state["generator"].cpu())
