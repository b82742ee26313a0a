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


def collect_episodes(
    env_id: str,
    act: ActFn | None,
    size: int,
    seed: int,
    max_episode_steps: int | None = None,
    progress: bool = True,
    label: str = "",
    *,
    episode_policy: Callable[[int], ActFn] | None = None,
    start: Callable[[gym.Env, np.random.Generator], Any] | None = None,
) -> list:
    """Roll out `act` until `size` transitions; episode i is reset with seed + i and its action
    noise comes from its own generator. The last episode is cut at `size` (a truncation).

    `episode_policy(i)`, instead of `act`, gives episode i its own policy (per-episode state such
    as a noise level); `start(env, rng)`, after the reset, may move the env to another initial
    state and returns the observation there."""
    from minari.data_collector import EpisodeBuffer
    from tqdm import tqdm

    if (act is None) == (episode_policy is None):
        raise ValueError("give exactly one of act and episode_policy")
    kwargs = {"max_episode_steps": max_episode_steps} if max_episode_steps else {}
    env = gym.make(env_id, **kwargs)
    episodes, total, index = [], 0, 0
    with tqdm(total=size, desc=label or env_id, unit="step", disable=not progress) as bar:
        while total < size:
            rng = episode_rng(seed, index)
            episode_act = act if episode_policy is None else episode_policy(index)
            obs, _ = env.reset(seed=seed + index)
            if start is not None:
                obs = start(env, rng)
            observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
            while True:
                # Step with exactly what is stored (float32), so replaying the data reproduces it.
                action = np.asarray(episode_act(obs, rng), dtype=env.action_space.dtype)
                obs, reward, terminated, truncated, _ = env.step(action)
                total += 1
                cut = total >= size
                observations.append(obs)
                actions.append(action)
                rewards.append(float(reward))
                terminations.append(bool(terminated))
                truncations.append(bool(truncated or (cut and not terminated)))
                if terminated or truncated or cut:
                    break
            bar.update(len(actions))
            episodes.append(
                EpisodeBuffer(
                    seed=seed + index,
                    observations=_stack(observations),
                    actions=np.asarray(actions, dtype=env.action_space.dtype),
                    rewards=np.asarray(rewards),
                    terminations=np.asarray(terminations),
                    truncations=np.asarray(truncations),
                )
            )
            index += 1
    env.close()
    return episodes


def _stack(observations: list) -> Any:
    """Per-step observations as one array, or a dict of arrays for dict observations."""
    if isinstance(observations[0], dict):
        return {key: _stack([obs[key] for obs in observations]) for key in observations[0]}
    return np.asarray(observations)


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
