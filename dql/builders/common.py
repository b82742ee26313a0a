"""Shared plumbing of the dataset builders: seeded rollouts, reference scores, Minari writing."""

from __future__ import annotations

import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from dql import __version__
from dql.errors import DatasetError, UserError

# act(obs, rng) -> action; rng is the episode's generator (None: the policy's noise-free action).
ActFn = Callable[[Any, "np.random.Generator | None"], np.ndarray]

# Reference-score episodes use their own reset seeds (not the build seed), so every dataset of an
# environment gets the same R_min and R_max from the same policies.
REF_SEED = 1_000_000


@dataclass
class BuildReport:
    """What a build wrote, for the CLI summary and the docs."""

    dataset_id: str
    path: Path
    transitions: int
    episodes: int
    seconds: float
    ref_min_score: float | None
    ref_max_score: float | None
    mean_episode_return: float

    def summary(self) -> str:
        ref = (
            f", ref_min {self.ref_min_score:.1f}, ref_max {self.ref_max_score:.1f}"
            if self.ref_min_score is not None and self.ref_max_score is not None
            else ", no reference scores"
        )
        return (
            f"{self.dataset_id}: {self.transitions:,} transitions, {self.episodes:,} episodes, "
            f"mean episode return {self.mean_episode_return:.1f}{ref}; built in "
            f"{self.seconds:.0f} s -> {self.path}"
        )


def check_positive(name: str, value: int) -> int:
    if value <= 0:
        raise UserError(f"{name} must be a positive integer, got {value}")
    return value


def episode_rng(seed: int, episode: int) -> np.random.Generator:
    """The action-noise generator of one episode: independent of how many episodes came before."""
    return np.random.default_rng([seed, episode])


def uniform_policy(action_space: gym.spaces.Box) -> ActFn:
    """Uniformly random actions in the action box (the D4RL/Minari 'random' behaviour)."""
    low, high = action_space.low.astype(np.float64), action_space.high.astype(np.float64)

    def act(obs: Any, rng: np.random.Generator | None) -> np.ndarray:
        rng = rng if rng is not None else np.random.default_rng()
        return rng.uniform(low, high)

    return act


def mean_return(
    env_id: str | gym.envs.registration.EnvSpec,
    act: ActFn,
    episodes: int,
    stochastic: bool = True,
    seed: int = REF_SEED,
) -> float:
    """Mean undiscounted return of `act` over `episodes` episodes with reset seeds seed + i."""
    env = gym.make(env_id)
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        rng = episode_rng(seed, i) if stochastic else None
        done, total = False, 0.0
        while not done:
            obs, reward, terminated, truncated, _ = env.step(act(obs, rng))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def minari_root() -> Path:
    from minari.storage.datasets_root_dir import get_dataset_path

    return Path(get_dataset_path())


def prepare_dataset_dir(dataset_id: str, overwrite: bool) -> None:
    """Refuse to clobber an existing dataset unless asked; delete it when asked."""
    from minari.storage.datasets_root_dir import get_dataset_path

    path = Path(get_dataset_path(dataset_id))
    if path.exists():
        if not overwrite:
            raise DatasetError(
                f"dataset {dataset_id} already exists at {path}; pass --overwrite to rebuild it"
            )
        shutil.rmtree(path)


def write_dataset(
    dataset_id: str,
    episodes: list,
    *,
    env: gym.envs.registration.EnvSpec,
    eval_env: gym.envs.registration.EnvSpec,
    algorithm_name: str,
    description: str,
    ref_min_score: float | None,
    ref_max_score: float | None,
    ref_episodes: int,
    requirements: list[str],
    started: float,
) -> BuildReport:
    """Write `episodes` (minari EpisodeBuffers) as an HDF5 Minari dataset and report on it."""
    import minari

    store = os.environ.get("MINARI_DATASETS_PATH")
    if store and not os.path.isabs(store):  # minari 0.5.4 joins a relative store path twice
        os.environ["MINARI_DATASETS_PATH"] = os.path.abspath(store)
    with warnings.catch_warnings():
        # author e-mail and code permalink are not ours to give; say so once, not per dataset.
        warnings.filterwarnings("ignore", message=r"`(author_email|code_permalink)` is set")
        dataset = minari.create_dataset_from_buffers(
            dataset_id=dataset_id,
            buffer=episodes,
            env=env,
            eval_env=eval_env,
            algorithm_name=algorithm_name,
            author=f"dql {__version__} dataset builders",
            description=description,
            ref_min_score=ref_min_score if ref_max_score is not None else None,
            ref_max_score=ref_max_score,
            num_episodes_average_score=ref_episodes,
            data_format="hdf5",
            requirements=requirements,
        )
    returns = [float(np.sum(ep.rewards)) for ep in episodes]
    return BuildReport(
        dataset_id=dataset_id,
        path=minari_root() / dataset_id,
        transitions=int(dataset.total_steps),
        episodes=int(dataset.total_episodes),
        seconds=time.time() - started,
        ref_min_score=ref_min_score if ref_max_score is not None else None,
        ref_max_score=ref_max_score,
        mean_episode_return=float(np.mean(returns)) if returns else float("nan"),
    )
