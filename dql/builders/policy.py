"""Behaviour policies that need only torch: a re-implementation of the Stable-Baselines3 SAC actor.

A policy is two files side by side: `<name>.pt`, the actor's state dict exactly as SB3 names it
(`latent_pi.*`, `mu.*`, `log_std.*`), and `<name>.json`, the architecture and provenance. Loading
uses `torch.load(weights_only=True)`, so no pickled code runs and SB3 is not needed.

The actor (SB3 `sac.policies.Actor`, default, no gSDE):
    h = MLP(s)                           (Linear-ReLU blocks, `hidden_sizes`)
    mu = W_mu h,  log_sigma = clip(W_sigma h, -20, 2)
    u = tanh(mu + sigma * eps),  eps ~ N(0, I)      (deterministic: eps = 0)
    a = low + (u + 1) / 2 * (high - low)            (SB3 `unscale_action`)

`Policy.in_float64()` runs the same actor in float64 and rounds each action to float32: the
BLAS kernels a CPU picks change float32 results in the last bit (and Hopper's contacts turn that
into another trajectory), while a float64 result moves by ~1e-16, which the rounding removes
except with probability ~1e-9 per action (measured: identical actions under MKL's default, AVX2,
SSE4_2 and COMPATIBLE paths, where float32 gives two different results).
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dql.errors import DatasetError

POLICY_FORMAT = "dql-sac-actor-v1"
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # SB3's clamp on the actor's log-std


class SquashedGaussianActor(nn.Module):
    """SB3 SAC actor: MLP -> (mean, log_std) -> tanh-squashed Gaussian, rescaled to the bounds."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden_sizes: Sequence[int],
        action_low: Sequence[float],
        action_high: Sequence[float],
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        last = obs_dim
        for size in hidden_sizes:
            layers += [nn.Linear(last, size), nn.ReLU()]
            last = size
        self.latent_pi = nn.Sequential(*layers)  # names match SB3's state dict
        self.mu = nn.Linear(last, act_dim)
        self.log_std = nn.Linear(last, act_dim)
        # Bounds are not in the state dict (it stays SB3-compatible); they come from the json.
        self.register_buffer("action_low", torch.as_tensor(action_low, dtype=torch.float32), False)
        self.register_buffer(
            "action_high", torch.as_tensor(action_high, dtype=torch.float32), False
        )
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.hidden_sizes = list(hidden_sizes)

    def forward(self, obs: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Action in the env's bounds for `obs` [B, obs_dim]; `noise` [B, act_dim] ~ N(0, I) or
        None for the deterministic (mean) action."""
        h = self.latent_pi(obs)
        pre_tanh = self.mu(h)
        if noise is not None:
            log_std = self.log_std(h).clamp(LOG_STD_MIN, LOG_STD_MAX)
            pre_tanh = pre_tanh + log_std.exp() * noise
        squashed = torch.tanh(pre_tanh)
        return self.action_low + 0.5 * (squashed + 1.0) * (self.action_high - self.action_low)


class Policy:
    """A loaded behaviour policy: `act(obs, rng)` samples an action for one numpy observation."""

    def __init__(
        self, actor: SquashedGaussianActor, meta: dict[str, Any], path: Path, float64: bool = False
    ) -> None:
        self.actor = actor.eval()
        self.meta = meta
        self.path = path
        self.float64 = float64

    def in_float64(self) -> Policy:
        """The same policy computed in float64, its actions rounded to float32: CPU-portable."""
        actor = copy.deepcopy(self.actor).double()
        return Policy(actor, self.meta, self.path, float64=True)

    @property
    def name(self) -> str:
        return self.path.stem

    def act(self, obs: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """Sample from the stochastic policy with noise from `rng`; `rng=None` gives the mean."""
        noise = None
        dtype = torch.float64 if self.float64 else torch.float32
        if rng is not None:  # float32 draws in both precisions: the same noise either way
            draw = rng.standard_normal((1, self.actor.act_dim), dtype=np.float32)
            noise = torch.from_numpy(draw).to(dtype)
        with torch.inference_mode():
            obs_t = torch.as_tensor(obs, dtype=dtype).reshape(1, -1)
            action = self.actor(obs_t, noise)[0].to(torch.float32)
            return action.numpy().astype(np.float64)

    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def copy_to(self, directory: Path) -> None:
        """Copy the weights and the description into `directory` (to rebuild a dataset exactly)."""
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.path, directory / self.path.name)
        shutil.copy2(self.path.with_suffix(".json"), directory / f"{self.path.stem}.json")


def save_policy(
    state_dict: dict[str, torch.Tensor],
    path: Path,
    *,
    env_id: str,
    action_low: Sequence[float],
    action_high: Sequence[float],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write an SB3 SAC actor state dict to `path` (.pt) and its description to `path`.json."""
    path = Path(path).with_suffix(".pt")
    weights = {k: v.detach().cpu().float().contiguous() for k, v in state_dict.items()}
    hidden = [weights[f"latent_pi.{2 * i}.weight"].shape[0] for i in range(_num_hidden(weights))]
    meta = {
        "format": POLICY_FORMAT,
        "env_id": env_id,
        "obs_dim": int(weights["latent_pi.0.weight"].shape[1]),
        "act_dim": int(weights["mu.weight"].shape[0]),
        "hidden_sizes": hidden,
        "activation": "relu",
        "action_low": [float(x) for x in action_low],
        "action_high": [float(x) for x in action_high],
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(weights, path)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def load_policy(path: str | Path) -> Policy:
    """Load `<name>.pt` + `<name>.json` written by `save_policy`; needs only torch."""
    path = Path(path).with_suffix(".pt")
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise DatasetError(f"policy {path} needs both {path.name} and {meta_path.name}")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != POLICY_FORMAT:
        raise DatasetError(f"{meta_path} is not a {POLICY_FORMAT} description")
    actor = SquashedGaussianActor(
        meta["obs_dim"],
        meta["act_dim"],
        meta["hidden_sizes"],
        meta["action_low"],
        meta["action_high"],
    )
    actor.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return Policy(actor, meta, path)


def _num_hidden(weights: dict[str, torch.Tensor]) -> int:
    return sum(1 for k in weights if k.startswith("latent_pi.") and k.endswith(".weight"))
