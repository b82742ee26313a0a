"""Shared fixtures: small Minari datasets built on the spot (no downloads), everything under tmp."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

torch.set_num_threads(1)

PENDULUM_GAINS = np.array([1.0, 20.0, 2.0, 3.0])  # a linear controller that balances the pole


def build_minari_dataset(
    dataset_id: str,
    env_id: str,
    policy: Callable[[object, np.random.Generator, int], np.ndarray],
    num_steps: int,
    *,
    seed: int = 0,
    max_episode_steps: int | None = None,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    eval_env: str | None = None,
) -> str:
    """Roll `policy(obs, rng, episode)` in `env_id` and store the episodes as a Minari dataset
    (HDF5) in $MINARI_DATASETS_PATH, with per-episode reset seeds seed + episode."""
    import minari
    from minari.data_collector import EpisodeBuffer

    if "Maze" in env_id:
        import gymnasium_robotics

        gym.register_envs(gymnasium_robotics)
    kwargs = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    env = gym.make(env_id, **kwargs)
    rng = np.random.default_rng(seed)
    buffers, steps, episode = [], 0, 0
    while steps < num_steps:
        obs, _ = env.reset(seed=seed + episode)
        observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
        while True:
            action = np.asarray(policy(obs, rng, episode), np.float32)
            action = np.clip(action, env.action_space.low, env.action_space.high)
            obs, reward, terminated, truncated, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(float(reward))
            terminations.append(bool(terminated))
            truncations.append(bool(truncated))
            steps += 1
            if terminated or truncated:
                break
            if steps >= num_steps:  # cut the last episode short: a truncation, not a terminal
                truncations[-1] = True
                break
        buffers.append(
            EpisodeBuffer(
                id=episode,
                seed=seed + episode,
                observations=_stack(observations),
                actions=np.stack(actions),
                rewards=rewards,
                terminations=terminations,
                truncations=truncations,
                infos={},
            )
        )
        episode += 1
    minari.create_dataset_from_buffers(
        dataset_id,
        buffers,
        env=env.spec,
        eval_env=eval_env,
        algorithm_name="test-controller",
        ref_min_score=ref_min_score,
        ref_max_score=ref_max_score,
        data_format="hdf5",
    )
    env.close()
    return dataset_id


def _stack(items: list) -> object:
    if isinstance(items[0], dict):
        return {k: _stack([item[k] for item in items]) for k in items[0]}
    return np.stack(items)


@pytest.fixture
def minari_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "minari"
    root.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def pendulum_policy(noise_levels: tuple[float, ...]) -> Callable:
    """Linear balancing controller + Gaussian noise whose scale cycles per episode."""

    def policy(obs: np.ndarray, rng: np.random.Generator, episode: int) -> np.ndarray:
        sigma = noise_levels[episode % len(noise_levels)]
        return np.array([PENDULUM_GAINS @ obs + sigma * rng.normal()])

    return policy


@pytest.fixture(scope="session")
def pendulum_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Mixed-quality InvertedPendulum-v5 data (time limit 200): returns (store path, id).
    ref_min = a random policy's return (~5), ref_max = the 200-step limit."""
    root = tmp_path_factory.mktemp("pendulum_minari")
    mp = pytest.MonkeyPatch()
    mp.setenv("MINARI_DATASETS_PATH", str(root))
    try:
        build_minari_dataset(
            "test/pendulum/mixed-v0",
            "InvertedPendulum-v5",
            pendulum_policy((0.0, 1.5, 3.0, 6.0)),
            20_000,
            seed=0,
            max_episode_steps=200,
            ref_min_score=5.0,
            ref_max_score=200.0,
        )
    finally:
        mp.undo()
    return str(root), "test/pendulum/mixed-v0"


@pytest.fixture
def pendulum_store(pendulum_dataset: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    root, dataset_id = pendulum_dataset
    monkeypatch.setenv("MINARI_DATASETS_PATH", root)
    return dataset_id


@pytest.fixture(autouse=True)
def _run_in_a_temporary_directory(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests write nothing into the repository: each runs from its own empty directory (MuJoCo
    writes MUJOCO_LOG.TXT into the working directory, and runs default to ./runs)."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
