"""Dataset layer: transition semantics, flattening, normalisation, reward transforms, scores,
content hashes and every error, checked against values computed by hand or read independently."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import gymnasium as gym
import h5py
import minari
import numpy as np
import pytest
from conftest import build_minari_dataset

from dql.data import (
    D4RL_REF_SCORES,
    ObservationNormalizer,
    d4rl_family,
    flatten_observation,
    load_dataset,
    normalized_score,
    observation_keys,
    resolve_ref_scores,
    task_name,
    transform_rewards,
)
from dql.errors import DatasetError, UserError
from dql.evaluation import evaluate, make_env

HOPPER = "test/hopper/random-v0"
MAZE = "test/pointmaze/umaze-v0"


def random_policy(action_dim: int):
    return lambda obs, rng, episode: rng.uniform(-1.0, 1.0, action_dim)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random Hopper-v5 (time limit 50: falls end in terminals, the rest in truncations) and
    PointMaze UMaze (dict observations, time limit 100, never terminates)."""
    root = tmp_path_factory.mktemp("data_minari")
    mp = pytest.MonkeyPatch()
    mp.setenv("MINARI_DATASETS_PATH", str(root))
    try:
        build_minari_dataset(
            HOPPER,
            "Hopper-v5",
            random_policy(3),
            3000,
            max_episode_steps=50,
            ref_min_score=-10.0,
            ref_max_score=90.0,
        )
        build_minari_dataset(
            MAZE, "PointMaze_UMaze-v3", random_policy(2), 450, max_episode_steps=100
        )
    finally:
        mp.undo()
    return root


@pytest.fixture
def local_store(store: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store))
    return store


def minari_episodes(dataset_id: str) -> list:
    return list(minari.load_dataset(dataset_id).iterate_episodes())


def f32(array: np.ndarray) -> np.ndarray:
    """The loader stores float32; Minari keeps what the env returned (float64)."""
    return np.asarray(array, np.float32)


def write_d4rl(path: Path, **arrays: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f[key] = value
    return path


def seven_steps(**overrides: np.ndarray) -> dict[str, np.ndarray]:
    """Three episodes by hand: rows 0-2 end in a terminal, rows 3-4 in a timeout, rows 5-6 are
    cut by the end of the file. observations[i] = (i, 10 + i), rewards[i] = i."""
    i = np.arange(7, dtype=np.float32)
    arrays = {
        "observations": np.stack([i, 10 + i], axis=1),
        "actions": (i / 10)[:, None],
        "rewards": i.copy(),
        "terminals": np.array([0, 0, 1, 0, 0, 0, 0], bool),
        "timeouts": np.array([0, 0, 0, 0, 1, 0, 0], bool),
    }
    arrays.update(overrides)
    return arrays


# --------------------------------------------------------------------------- Minari semantics


def test_minari_keeps_every_transition_with_its_real_next_observation(local_store):
    data = load_dataset(HOPPER)
    episodes = minari_episodes(HOPPER)
    assert len(data) == sum(len(ep.rewards) for ep in episodes) == 3000
    start = 0
    for index, ep in enumerate(episodes):
        rows = slice(start, start + len(ep.rewards))
        np.testing.assert_array_equal(data.observations[rows], f32(ep.observations[:-1]))
        np.testing.assert_array_equal(data.next_observations[rows], f32(ep.observations[1:]))
        np.testing.assert_array_equal(data.actions[rows], f32(ep.actions))
        np.testing.assert_array_equal(data.rewards[rows], np.float32(ep.rewards))
        np.testing.assert_array_equal(data.terminals[rows], ep.terminations)
        np.testing.assert_array_equal(data.timeouts[rows], ep.truncations)
        assert (data.episode_ids[rows] == index).all()
        start += len(ep.rewards)

    # a truncated (not terminated) episode keeps its last transition, bootstrapping from the real
    # next observation, not from the reset observation of the following episode
    cut = [i for i, ep in enumerate(episodes) if ep.truncations[-1] and not ep.terminations[-1]]
    fell = [i for i, ep in enumerate(episodes) if ep.terminations[-1]]
    assert cut and fell  # the fixture exercises both endings
    for i in cut[:-1]:
        last = np.flatnonzero(data.episode_ids == i)[-1]
        assert data.terminals[last] == 0 and data.timeouts[last] == 1
        np.testing.assert_array_equal(
            data.next_observations[last], f32(episodes[i].observations[-1])
        )
        assert not np.array_equal(data.next_observations[last], data.observations[last + 1])


def test_minari_terminals_only_where_hopper_fell(local_store):
    data = load_dataset(HOPPER)
    # Hopper-v5 terminates when the next state is unhealthy: z <= 0.7, |angle| >= 0.2, or a joint
    # position beyond 100 (observation = qpos[1:] then clipped qvel)
    z, angle = data.next_observations[:, 0], data.next_observations[:, 1]
    positions = data.next_observations[:, 1:6]
    unhealthy = (z <= 0.7) | (np.abs(angle) >= 0.2) | (np.abs(positions) >= 100).any(1)
    np.testing.assert_array_equal(data.terminals, unhealthy.astype(np.float32))
    # a terminal is always an episode's last step; the other episode ends are time limits
    ends = np.flatnonzero(np.diff(data.episode_ids, append=data.episode_ids[-1] + 1))
    assert set(np.flatnonzero(data.terminals)) <= set(ends)
    assert ((data.terminals[ends] + data.timeouts[ends]) >= 1).all()
    assert data.terminals.sum() > 10 and data.timeouts.sum() >= 2


# --------------------------------------------------------------------------- D4RL HDF5 semantics


def test_d4rl_without_next_observations_follows_qlearning_dataset(tmp_path):
    data = load_dataset(write_d4rl(tmp_path / "toy.hdf5", **seven_steps()))
    # timeout row 4 (its next row starts a new episode) and the last row 6 are dropped
    np.testing.assert_array_equal(data.observations[:, 0], [0, 1, 2, 3, 5])
    np.testing.assert_array_equal(data.observations[:, 1], [10, 11, 12, 13, 15])
    np.testing.assert_array_equal(data.next_observations[:, 0], [1, 2, 3, 4, 6])
    np.testing.assert_array_equal(data.rewards, [0, 1, 2, 3, 5])
    np.testing.assert_allclose(data.actions[:, 0], [0, 0.1, 0.2, 0.3, 0.5])
    np.testing.assert_array_equal(data.terminals, [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(data.timeouts, [0, 0, 0, 0, 0])
    np.testing.assert_array_equal(data.episode_ids, [0, 0, 0, 1, 2])
    assert data.info.source == "hdf5" and data.info.observation_dim == 2
    assert data.info.action_dim == 1 and data.info.env_id is None
    np.testing.assert_array_equal(data.episode_returns(), [3, 3, 5])
    assert data.info.mean_episode_return == pytest.approx(11 / 3)  # the tables' behaviour level


def test_d4rl_with_next_observations_drops_nothing(tmp_path):
    arrays = seven_steps()
    arrays["next_observations"] = arrays["observations"] + 100
    data = load_dataset(write_d4rl(tmp_path / "toy.hdf5", **arrays))
    assert len(data) == 7
    np.testing.assert_array_equal(data.next_observations, arrays["observations"] + 100)
    np.testing.assert_array_equal(data.timeouts, [0, 0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(data.terminals, [0, 0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(data.episode_ids, [0, 0, 0, 1, 1, 2, 2])


# --------------------------------------------------------------------------- dict observations


def test_flatten_order_observation_goals_then_sorted_others():
    obs = {
        "zeta": np.array([7.0]),
        "desired_goal": np.array([5.0, 6.0]),
        "alpha": {"y": np.array([9.0]), "b": 8.0},
        "observation": np.array([1.0, 2.0]),
        "achieved_goal": np.array([3.0, 4.0]),
    }
    flat = flatten_observation(obs)
    np.testing.assert_array_equal(flat, [1, 2, 3, 4, 5, 6, 8, 9, 7])
    assert flat.dtype == np.float32
    assert observation_keys(obs) == (
        "observation",
        "achieved_goal",
        "desired_goal",
        "alpha.b",
        "alpha.y",
        "zeta",
    )
    batch = {k: np.stack([v, np.add(v, 1)]) if k != "alpha" else v for k, v in obs.items()}
    batch["alpha"] = {"y": np.array([[9.0], [10.0]]), "b": np.array([[8.0], [9.0]])}
    np.testing.assert_array_equal(flatten_observation(batch)[1], [2, 3, 4, 5, 6, 7, 9, 10, 8])
    assert observation_keys(np.zeros(3)) is None


def test_minari_dict_observations_are_flattened_in_order(local_store):
    data = load_dataset(MAZE)
    assert data.info.observation_keys == ("observation", "achieved_goal", "desired_goal")
    assert data.info.observation_dim == 8
    start = 0
    for ep in minari_episodes(MAZE):
        o = ep.observations
        expected = f32(np.concatenate([o["observation"], o["achieved_goal"], o["desired_goal"]], 1))
        rows = slice(start, start + len(ep.rewards))
        np.testing.assert_array_equal(data.observations[rows], expected[:-1])
        np.testing.assert_array_equal(data.next_observations[rows], expected[1:])
        start += len(ep.rewards)
    assert start == len(data)
    # PointMaze never terminates: every episode ends in a time-limit truncation
    assert data.terminals.sum() == 0 and data.timeouts.sum() == 5


def test_evaluation_env_flattens_and_normalises_like_the_dataset(local_store):
    info = load_dataset(MAZE).info
    rng = np.random.default_rng(0)
    normalizer = ObservationNormalizer(
        rng.normal(size=8).astype(np.float32), rng.uniform(0.5, 2, 8).astype(np.float32)
    )

    def steer(flat: np.ndarray) -> np.ndarray:  # PD controller to the goal, on raw flat obs
        position, velocity, goal = flat[..., 0:2], flat[..., 2:4], flat[..., 6:8]
        return np.clip(5 * (goal - position) - velocity, -1, 1)

    seen: list[np.ndarray] = []

    def policy(normalised: np.ndarray) -> np.ndarray:
        seen.append(normalised.copy())
        return steer(normalised * normalizer.std + normalizer.mean)

    result = evaluate(
        policy, info, num_episodes=2, seed=3, normalizer=normalizer, max_episode_steps=40,
        progress=False,
    )  # fmt: skip
    assert list(result.lengths) == [40, 40]

    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    for episode in range(2):  # the same rollout by hand, flattening written out explicitly
        env = gym.make("PointMaze_UMaze-v3", max_episode_steps=40)
        obs, _ = env.reset(seed=3 + episode)
        total = 0.0
        for t in range(40):
            flat = np.concatenate([obs["observation"], obs["achieved_goal"], obs["desired_goal"]])
            np.testing.assert_allclose(
                seen[t][episode], (flat - normalizer.mean) / normalizer.std, rtol=1e-5, atol=1e-5
            )
            action = np.asarray(steer(seen[t][episode] * normalizer.std + normalizer.mean))
            obs, reward, *_ = env.step(action.astype(np.float32))
            total += reward
        assert result.returns[episode] == pytest.approx(total)
        env.close()
    assert result.returns.sum() > 0  # the controller does reach goals: the goal was read right


# --------------------------------------------------------------------------- normalisation


def test_observation_normalizer_values():
    x = np.array([[1.0, 10.0], [3.0, 10.0], [5.0, 10.0]], np.float32)
    norm = ObservationNormalizer.from_data(x)
    std0 = math.sqrt(8 / 3) + 1e-3  # population std + eps; a constant feature gets std = eps
    np.testing.assert_allclose(norm.mean, [3.0, 10.0])
    np.testing.assert_allclose(norm.std, [std0, 1e-3], rtol=1e-6)
    np.testing.assert_allclose(norm(x)[:, 0], [-2 / std0, 0, 2 / std0], rtol=1e-6)
    np.testing.assert_array_equal(norm(x)[:, 1], [0, 0, 0])
    np.testing.assert_allclose(norm(np.array([[3.0, 11.0]]))[0], [0, 1000], rtol=1e-5)
    assert norm(x).dtype == np.float32
    again = ObservationNormalizer.from_state_dict(norm.state_dict())
    np.testing.assert_array_equal(again(x), norm(x))
    np.testing.assert_array_equal(ObservationNormalizer.identity(2)(x), x)


# --------------------------------------------------------------------------- rewards and scores


@pytest.fixture
def two_episodes(tmp_path):
    """Rewards [1, 2, 3 | 0.5, 0.5]: episode returns 6 and 1, nothing dropped."""
    obs = np.arange(10, dtype=np.float32).reshape(5, 2)
    arrays = {
        "observations": obs,
        "next_observations": obs + 1,
        "actions": np.zeros((5, 1), np.float32),
        "rewards": np.array([1, 2, 3, 0.5, 0.5], np.float32),
        "terminals": np.array([0, 0, 1, 0, 0], bool),
        "timeouts": np.array([0, 0, 0, 0, 1], bool),
    }
    return load_dataset(write_d4rl(tmp_path / "two.hdf5", **arrays))


def test_reward_transforms_by_hand(two_episodes):
    data = two_episodes
    np.testing.assert_array_equal(transform_rewards(data, "none"), [1, 2, 3, 0.5, 0.5])
    std = math.sqrt(0.94)  # mean 1.4; squared deviations .16 .36 2.56 .81 .81 sum to 4.7
    zscore = [(r - 1.4) / (std + 1e-6) for r in (1, 2, 3, 0.5, 0.5)]
    np.testing.assert_allclose(transform_rewards(data, "zscore"), zscore, rtol=1e-5)
    np.testing.assert_allclose(transform_rewards(data, "normalize"), zscore, rtol=1e-5)
    # IQL locomotion: r * 1000 / (max return 6 - min return 1)
    np.testing.assert_allclose(transform_rewards(data, "locomotion"), [200, 400, 600, 100, 100])
    np.testing.assert_allclose(transform_rewards(data, "cql_antmaze"), [2, 6, 10, 0, 0])
    np.testing.assert_allclose(transform_rewards(data, "corl_antmaze"), [5, 15, 25, 0, 0])
    np.testing.assert_allclose(transform_rewards(data, "antmaze"), [0, 1, 2, -0.5, -0.5])
    assert transform_rewards(data, "antmaze").dtype == np.float32
    np.testing.assert_array_equal(data.rewards, [1, 2, 3, 0.5, 0.5])  # the data is untouched
    with pytest.raises(DatasetError, match="unknown reward transform 'iql'.*locomotion"):
        transform_rewards(data, "iql")
    same_returns = data.with_rewards(np.array([1, 2, 0, 3, 0], np.float32))
    with pytest.raises(DatasetError, match="locomotion.*different returns"):
        transform_rewards(same_returns, "locomotion")


def test_normalized_score_from_metadata(local_store):
    info = load_dataset(HOPPER).info
    assert (info.ref_min_score, info.ref_max_score) == (-10.0, 90.0)
    assert resolve_ref_scores(info) == (-10.0, 90.0)
    assert resolve_ref_scores(info, ref_max=190.0) == (-10.0, 190.0)  # a flag overrides
    np.testing.assert_allclose(normalized_score([-10, 40, 90, 140], -10, 90), [0, 50, 100, 150])


def test_normalized_score_from_d4rl_table_for_d4rl_files(tmp_path):
    arrays = seven_steps(observations=np.zeros((7, 11), np.float32), actions=np.zeros((7, 3)))
    info = load_dataset(write_d4rl(tmp_path / "hopper-medium-v2.hdf5", **arrays)).info
    assert info.ref_min_score is None and info.env_id == "Hopper-v5"
    lo, hi = resolve_ref_scores(info)
    assert (lo, hi) == (-20.272305, 3234.3) == D4RL_REF_SCORES["hopper"]
    np.testing.assert_allclose(normalized_score([lo, hi, (lo + hi) / 2], lo, hi), [0, 100, 50])
    assert task_name(str(tmp_path / "hopper-medium-v2.hdf5")) == "hopper-medium"
    assert d4rl_family("D4RL/antmaze/umaze-diverse-v1") == "antmaze"
    assert d4rl_family("D4RL/pointmaze/large-v2") == "maze2d-large"
    assert d4rl_family("halfcheetah-medium-expert-v2.hdf5") == "halfcheetah"
    assert d4rl_family("mujoco/hopper/medium-v0") is None  # Minari's own: scores in metadata
    assert d4rl_family("test/hopper/random-v0") is None


def test_normalized_score_without_reference_is_a_clear_error(local_store):
    info = load_dataset(MAZE).info  # a local dataset with no ref scores, not a D4RL id
    with pytest.raises(DatasetError, match="no reference scores.*--ref-min-score"):
        resolve_ref_scores(info)
    assert resolve_ref_scores(info, 0.0, 3.0) == (0.0, 3.0)
    with pytest.raises(DatasetError, match="min < max"):
        resolve_ref_scores(info, 3.0, 3.0)


def test_content_hash_is_stable_and_sensitive_to_data(tmp_path, local_store):
    first = load_dataset(HOPPER).info.content_hash
    assert first == load_dataset(HOPPER).info.content_hash and len(first) == 32
    base = load_dataset(write_d4rl(tmp_path / "a.hdf5", **seven_steps())).info.content_hash
    renamed = load_dataset(write_d4rl(tmp_path / "b.hdf5", **seven_steps())).info.content_hash
    assert base == renamed  # the hash is of the content, not of the name
    rewards = np.arange(7, dtype=np.float32)
    rewards[1] += 1e-3
    changed = seven_steps(rewards=rewards)
    assert load_dataset(write_d4rl(tmp_path / "c.hdf5", **changed)).info.content_hash != base
    ended = seven_steps(terminals=np.array([0, 1, 1, 0, 0, 0, 0], bool))
    assert load_dataset(write_d4rl(tmp_path / "d.hdf5", **ended)).info.content_hash != base


# --------------------------------------------------------------------------- errors


def test_unknown_or_absent_datasets_say_what_to_do(local_store, tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'nope'"):
        load_dataset("nope")
    with pytest.raises(
        DatasetError, match="'test/absent/thing-v0' is not in the local store.*--download"
    ):
        load_dataset("test/absent/thing-v0")
    with pytest.raises(DatasetError, match="dql data build hopper-expert"):
        load_dataset("local/hopper/expert-v0")
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(str(tmp_path / "absent.hdf5"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match="not an HDF5 file"):
        load_dataset(tmp_path / "notes.txt")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DatasetError, match="not a Minari dataset directory"):
        load_dataset(tmp_path / "empty_dir")


def test_download_without_network_is_a_clear_error(local_store, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetError, match="download") as error:
        load_dataset("test/absent/thing-v0", download=True)
    assert "\n" not in str(error.value)


def test_hdf5_problems_are_named(tmp_path):
    arrays = seven_steps()
    del arrays["timeouts"]
    with pytest.raises(DatasetError, match="missing key\\(s\\) timeouts"):
        load_dataset(write_d4rl(tmp_path / "a.hdf5", **arrays))
    short = seven_steps(rewards=np.zeros(6, np.float32))
    with pytest.raises(DatasetError, match="differ in length.*rewards 6"):
        load_dataset(write_d4rl(tmp_path / "b.hdf5", **short))
    empty = {k: v[:0] for k, v in seven_steps().items()}
    with pytest.raises(DatasetError, match="0 step"):
        load_dataset(write_d4rl(tmp_path / "c.hdf5", **empty))
    all_timeouts = seven_steps(timeouts=np.ones(7, bool))
    with pytest.raises(DatasetError, match="no transitions left"):
        load_dataset(write_d4rl(tmp_path / "d.hdf5", **all_timeouts))
    (tmp_path / "garbage.hdf5").write_bytes(b"not hdf5 at all" * 100)
    with pytest.raises(DatasetError, match="corrupt or unreadable"):
        load_dataset(tmp_path / "garbage.hdf5")


@pytest.mark.parametrize(
    ("field", "row", "count"),
    [("observations", 3, 1), ("actions", 0, 1), ("rewards", 5, 1), ("rewards", 6, 0)],
)
def test_non_finite_values_are_refused_with_field_and_count(tmp_path, field, row, count):
    arrays = seven_steps()
    arrays[field] = arrays[field].astype(np.float32)
    arrays[field][row] = np.inf if field == "rewards" else np.nan
    path = write_d4rl(tmp_path / "bad.hdf5", **arrays)
    if count == 0:  # the last row is dropped by qlearning_dataset: its reward is never used
        assert np.isfinite(load_dataset(path).rewards).all()
        return
    # (observation row 3 is also row 2's next observation: reported under observations first)
    shape = arrays[field].shape
    bad = count * (shape[1] if len(shape) > 1 else 1)
    with pytest.raises(DatasetError, match=f"field '{field}' has {bad} NaN/inf"):
        load_dataset(path)


def test_corrupt_minari_files_are_a_dataset_error(local_store, tmp_path):
    copy = tmp_path / "hopper_copy"
    shutil.copytree(local_store / HOPPER, copy)
    main_file = copy / "data" / "main_data.hdf5"
    main_file.write_bytes(main_file.read_bytes()[: main_file.stat().st_size // 2])
    with pytest.raises(DatasetError, match="corrupt or unreadable dataset files"):
        load_dataset(copy)
    (copy / "data" / "metadata.json").unlink()
    with pytest.raises(DatasetError, match="not a Minari dataset directory"):
        load_dataset(copy)


def test_observation_or_action_size_mismatch_with_the_env(tmp_path, local_store):
    arrays = seven_steps(actions=np.zeros((7, 3), np.float32))  # 2-d observations, not 11
    info = load_dataset(write_d4rl(tmp_path / "hopper-medium-v2.hdf5", **arrays)).info
    with pytest.raises(UserError, match="observation size 11 and action size 3.*has 2 and 3"):
        make_env(info)
    maze = load_dataset(MAZE).info
    with pytest.raises(UserError, match="Hopper-v5 has observation size 11.*has 8 and 2"):
        make_env(maze, "Hopper-v5")
    with pytest.raises(UserError, match="cannot create evaluation env Nope-v0"):
        make_env(maze, "Nope-v0")
    toy = load_dataset(write_d4rl(tmp_path / "toy.hdf5", **seven_steps())).info
    with pytest.raises(UserError, match="names no environment; pass --env-id"):
        make_env(toy)
