"""Replay buffer: contiguous tensors, normalisation, seeded and resumable sampling, sampled rows
that are real transitions, and windows that stay inside one episode."""

from __future__ import annotations

import io

import h5py
import numpy as np
import pytest
import torch
from conftest import build_minari_dataset

from dql.buffer import ReplayBuffer
from dql.data import ObservationNormalizer, Transitions, load_dataset
from dql.errors import ConfigError

FIELDS = ("observations", "actions", "rewards", "next_observations", "terminals")


@pytest.fixture(scope="module")
def hopper(tmp_path_factory: pytest.TempPathFactory) -> Transitions:
    """2000 random Hopper-v5 steps with time limit 40: many short episodes of varied length."""
    root = tmp_path_factory.mktemp("buffer_minari")
    mp = pytest.MonkeyPatch()
    mp.setenv("MINARI_DATASETS_PATH", str(root))
    try:
        policy = lambda obs, rng, episode: rng.uniform(-1, 1, 3)  # noqa: E731
        build_minari_dataset(
            "test/hopper/buffer-v0", "Hopper-v5", policy, 2000, max_episode_steps=40
        )
        return load_dataset("test/hopper/buffer-v0")
    finally:
        mp.undo()


@pytest.fixture
def toy(tmp_path) -> Transitions:
    """Seven rows in three episodes [0, 3), [3, 5), [5, 7); observations[i] = (i, -i)."""
    i = np.arange(7, dtype=np.float32)
    with h5py.File(tmp_path / "toy.hdf5", "w") as f:
        f["observations"] = np.stack([i, -i], 1)
        f["next_observations"] = np.stack([i + 0.5, -i - 0.5], 1)
        f["actions"] = (i / 10)[:, None]
        f["rewards"] = i
        f["terminals"] = np.array([0, 0, 1, 0, 0, 0, 0], bool)
        f["timeouts"] = np.array([0, 0, 0, 0, 1, 0, 1], bool)
    return load_dataset(tmp_path / "toy.hdf5")


def row_index(buffer: ReplayBuffer, observations: torch.Tensor) -> torch.Tensor:
    """Dataset row of each sampled observation (Hopper observations are all distinct)."""
    match = (observations[:, None, :] == buffer.observations[None, :, :]).all(-1)  # (B, N)
    assert (match.sum(1) == 1).all(), "a sampled observation is not exactly one dataset row"
    return match.float().argmax(1)


def test_tensors_are_contiguous_typed_and_normalised(toy):
    normalizer = ObservationNormalizer(np.array([1, 2], np.float32), np.array([2, 4], np.float32))
    rewards = toy.rewards * 3
    buffer = ReplayBuffer(toy, normalizer=normalizer, rewards=rewards)
    for name in (*FIELDS, "timeouts", "episode_ids"):
        tensor = getattr(buffer, name)
        assert tensor.is_contiguous() and tensor.device.type == "cpu", name
        assert tensor.dtype == (torch.int64 if name == "episode_ids" else torch.float32), name
    assert len(buffer) == 7 and buffer.observations.shape == (7, 2)
    assert buffer.actions.shape == (7, 1) and buffer.rewards.shape == (7,)
    i = torch.arange(7, dtype=torch.float32)
    torch.testing.assert_close(buffer.observations[:, 0], (i - 1) / 2)
    torch.testing.assert_close(buffer.observations[:, 1], (-i - 2) / 4)
    torch.testing.assert_close(buffer.next_observations[:, 0], (i + 0.5 - 1) / 2)
    torch.testing.assert_close(buffer.rewards, 3 * i)  # the transformed rewards, not the raw ones
    np.testing.assert_array_equal(toy.rewards, np.arange(7))
    batch = buffer.sample(5)
    assert {k: tuple(v.shape) for k, v in batch.items()} == {
        "observations": (5, 2),
        "actions": (5, 1),
        "rewards": (5,),
        "next_observations": (5, 2),
        "terminals": (5,),
    }
    assert all(v.is_contiguous() for v in batch.values())


def test_same_seed_same_batches_other_seed_other_batches(hopper):
    a, b, c = (ReplayBuffer(hopper, seed=s) for s in (3, 3, 4))
    for _ in range(3):
        batch_a, batch_b, batch_c = a.sample(64), b.sample(64), c.sample(64)
        for k in FIELDS:
            assert torch.equal(batch_a[k], batch_b[k])
        assert not torch.equal(batch_a["observations"], batch_c["observations"])


def test_state_dict_round_trip_continues_the_same_stream(hopper):
    reference = ReplayBuffer(hopper, seed=7)
    reference.sample(32)
    reference.sample_windows(8, 4)
    saved = io.BytesIO()
    torch.save(reference.state_dict(), saved)  # as in a checkpoint, read back weights_only
    expected = [reference.sample(32), reference.sample_windows(8, 4), reference.sample(32)]

    resumed = ReplayBuffer(hopper, seed=123)
    resumed.load_state_dict(torch.load(io.BytesIO(saved.getvalue()), weights_only=True))
    got = [resumed.sample(32), resumed.sample_windows(8, 4), resumed.sample(32)]
    for want, have in zip(expected, got):
        for k in want:
            assert torch.equal(want[k], have[k]), k


def test_sampled_rows_are_real_transitions(hopper):
    buffer = ReplayBuffer(hopper, seed=0)
    batch = buffer.sample(256)
    rows = row_index(buffer, batch["observations"])
    for k in FIELDS:
        assert torch.equal(batch[k], getattr(buffer, k)[rows]), k
    # within an episode the next observation is the following row's observation; at an episode's
    # end it is the stored final observation (Minari keeps T+1), never the next episode's first
    ids = buffer.episode_ids
    for r in rows.tolist():
        last_of_episode = r + 1 == len(buffer) or ids[r + 1] != ids[r]
        if not last_of_episode:
            assert torch.equal(batch["next_observations"][rows == r][0], buffer.observations[r + 1])
        elif r + 1 < len(buffer):
            assert not torch.equal(buffer.next_observations[r], buffer.observations[r + 1])
    # row r carries its own terminal flag: Hopper fell (z <= 0.7 or |angle| >= 0.2) exactly there
    next_obs = torch.as_tensor(hopper.next_observations)[rows]
    fell = (next_obs[:, 0] <= 0.7) | (next_obs[:, 1].abs() >= 0.2)
    torch.testing.assert_close(batch["terminals"], fell.float())


def test_uniform_sampling_covers_every_row(toy):
    buffer = ReplayBuffer(toy, seed=0)
    counts = torch.zeros(7)
    for _ in range(20):
        batch = buffer.sample(1000)
        counts += torch.bincount(batch["observations"][:, 0].long(), minlength=7)
    # 20000 draws, p = 1/7: mean 2857, std 49; 5 sigma
    assert (counts - 20000 / 7).abs().max() < 5 * 49


def test_window_starts_by_hand(toy):
    buffer = ReplayBuffer(toy)
    assert buffer.window_starts(1).tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert buffer.window_starts(2).tolist() == [0, 1, 3, 5]
    assert buffer.window_starts(3).tolist() == [0]
    with pytest.raises(ConfigError, match="no episode has 4 steps \\(longest has 3\\)"):
        buffer.window_starts(4)
    with pytest.raises(ConfigError, match="horizon must be >= 1"):
        buffer.window_starts(0)
    seen = set()
    for _ in range(10):
        seen.update(buffer.sample_windows(64, 2)["observations"][:, 0, 0].long().tolist())
    assert seen == {0, 1, 3, 5}  # every legal start is drawn, no other


def test_windows_lie_within_one_episode_and_are_contiguous(hopper):
    buffer = ReplayBuffer(hopper, seed=1)
    horizon = 12
    lengths = np.bincount(hopper.episode_ids)
    assert (lengths < horizon).any() and (lengths >= horizon).any()  # both kinds of episode
    windows = buffer.sample_windows(200, horizon)
    assert windows["observations"].shape == (200, horizon, 11)
    assert windows["actions"].shape == (200, horizon, 3)
    assert windows["rewards"].shape == windows["terminals"].shape == (200, horizon)
    starts = row_index(buffer, windows["observations"][:, 0])
    for window, start in enumerate(starts.tolist()):
        rows = torch.arange(start, start + horizon)
        assert rows[-1] < len(buffer)
        assert (buffer.episode_ids[rows] == buffer.episode_ids[start]).all()
        for k in ("observations", "actions", "rewards", "terminals"):
            assert torch.equal(windows[k][window], getattr(buffer, k)[rows]), k
    # a terminal can only be a window's last step (it ends the episode)
    assert windows["terminals"][:, :-1].sum() == 0
