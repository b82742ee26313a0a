"""Shared fixtures: small Minari datasets built on the spot (no downloads), everything under tmp."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

torch.set_num_threads(1)


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
    """Roll `policy(obs, rng, episode)` in `env_id` through the builders' rollout (reset seeds
    seed + i, one generator per episode, actions clipped to the box) and store the episodes as
    a Minari dataset (HDF5) in $MINARI_DATASETS_PATH."""
    import minari

    from dql.builders.common import collect_episodes

    if "Maze" in env_id:
        import gymnasium_robotics

        gym.register_envs(gymnasium_robotics)
    env = gym.make(
        env_id, **({} if max_episode_steps is None else {"max_episode_steps": max_episode_steps})
    )
    low, high = env.action_space.low, env.action_space.high

    def episode_policy(episode: int) -> Callable:
        return lambda obs, rng: np.clip(policy(obs, rng, episode), low, high)

    episodes = collect_episodes(
        env_id, None, num_steps, seed, max_episode_steps, False, episode_policy=episode_policy
    )
    minari.create_dataset_from_buffers(
        dataset_id,
        episodes,
        env=env.spec,
        eval_env=eval_env,
        algorithm_name="test-controller",
        ref_min_score=ref_min_score,
        ref_max_score=ref_max_score,
        data_format="hdf5",
    )
    env.close()
    return dataset_id


def build_pendulum_dataset(behaviour: str, dataset_id: str, **kwargs) -> str:
    """One of dql.builders.pendulum's datasets (the demo's and crosscheck's recipes) under
    `dataset_id`, quietly, with 20 reference episodes."""
    from dql.builders.pendulum import build_pendulum

    build_pendulum(
        behaviour, dataset_id_override=dataset_id, ref_episodes=20, progress=False, **kwargs
    )
    return dataset_id


@pytest.fixture
def minari_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "minari"
    root.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


@pytest.fixture(scope="session")
def pendulum_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Mixed-quality InvertedPendulum-v5 data (pendulum-noisy: 20k steps, time limit 200):
    returns (store path, id). ref_min = a random policy's return (~5), ref_max = 200."""
    root = tmp_path_factory.mktemp("pendulum_minari")
    mp = pytest.MonkeyPatch()
    mp.setenv("MINARI_DATASETS_PATH", str(root))
    try:
        build_pendulum_dataset("noisy", "test/pendulum/mixed-v0")
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
