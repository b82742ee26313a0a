"""Dataset builders: Minari validity, termination/truncation semantics (checked by replaying the
stored actions in the env), dataset quality against reference scores, the PointMaze controller,
the torch-only SAC actor, resumable SAC training and the CLI. Everything is written under tmp."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import minari
import numpy as np
import pytest
import torch

from dql.builders import cli
from dql.builders.locomotion import (
    PACKAGED_POLICIES,
    RECIPES,
    build_locomotion,
    select_checkpoints,
    train_sac,
)
from dql.builders.pointmaze import (
    MAZES,
    WaypointController,
    build_pointmaze,
    maze_env_id,
    register_envs,
    success_rate,
)
from dql.builders.policy import SquashedGaussianActor, load_policy, save_policy
from dql.cli import main as dql_main
from dql.errors import DatasetError, UserError

ROOT = Path(__file__).resolve().parent.parent
SIZE = 3000  # transitions per test dataset
RANDOM_LIMIT = 50  # time limit of the random test data: forces truncations besides falls
REF_EPISODES = 3

needs_hopper_policies = pytest.mark.skipif(
    not (PACKAGED_POLICIES / "hopper_expert.pt").is_file()
    or not (PACKAGED_POLICIES / "hopper_medium.pt").is_file(),
    reason="the shipped Hopper policies (dql/policies/hopper_{medium,expert}.pt) are missing",
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A Minari store (and an empty policy dir, so the shipped policies are used) for the module."""
    root = tmp_path_factory.mktemp("builders_minari")
    mp = pytest.MonkeyPatch()
    mp.setenv("MINARI_DATASETS_PATH", str(root / "datasets"))
    mp.setenv("DQL_POLICY_DIR", str(root / "policies"))
    yield root
    mp.undo()


def _build(quality: str, **kwargs) -> minari.MinariDataset:
    options = dict(size=SIZE, ref_episodes=REF_EPISODES, progress=False)
    build_locomotion("hopper", quality, **{**options, **kwargs})
    return minari.load_dataset(f"local/hopper/{quality}-v0")


@pytest.fixture(scope="module")
def hopper_random(store: Path) -> minari.MinariDataset:
    return _build("random", max_episode_steps=RANDOM_LIMIT)


@pytest.fixture(scope="module")
def hopper_medium(store: Path) -> minari.MinariDataset:
    return _build("medium")


def _check_flags_by_replay(dataset: minari.MinariDataset, episodes: int, limit: int) -> None:
    """Reset with each episode's seed, replay its actions: observations, rewards and the
    termination flags must match the env's; truncations only at the time limit or the size cut."""
    env = dataset.recover_environment()
    assert env.spec.max_episode_steps == limit
    stored = list(dataset.iterate_episodes())
    for ep in stored[:episodes]:
        obs, _ = env.reset(seed=int(ep.id))  # build seed 0: episode i resets with seed i
        np.testing.assert_allclose(obs, ep.observations[0])
        for t, action in enumerate(ep.actions):
            obs, reward, terminated, truncated, _ = env.step(action)
            np.testing.assert_allclose(obs, ep.observations[t + 1], rtol=1e-6, atol=1e-8)
            assert reward == pytest.approx(ep.rewards[t])
            assert bool(ep.terminations[t]) == terminated
            last = t == len(ep.actions) - 1
            assert bool(ep.truncations[t]) == (truncated or (last and not terminated))
    for ep in stored[:-1]:  # only the final episode may be cut by --size
        ends = ep.terminations[-1] or (ep.truncations[-1] and len(ep.actions) == limit)
        assert ends and not ep.terminations[:-1].any() and not ep.truncations[:-1].any()


def test_random_dataset_is_valid_minari(hopper_random: minari.MinariDataset) -> None:
    meta = hopper_random.storage.metadata
    assert hopper_random.total_steps == SIZE
    assert sum(len(ep.actions) for ep in hopper_random.iterate_episodes()) == SIZE
    assert hopper_random.total_episodes == len(list(hopper_random.iterate_episodes()))
    assert meta["ref_min_score"] < meta["ref_max_score"]
    assert meta["num_episodes_average_score"] == REF_EPISODES
    assert "uniform" in meta["algorithm_name"]
    assert (Path(hopper_random.storage.data_path) / "main_data.hdf5").is_file()
    _check_flags_by_replay(hopper_random, episodes=20, limit=RANDOM_LIMIT)
    episodes = list(hopper_random.iterate_episodes())
    assert any(ep.truncations[-1] for ep in episodes[:-1]), "no episode reached the time limit"
    assert any(ep.terminations[-1] for ep in episodes), "no episode terminated"


@needs_hopper_policies
def test_medium_dataset_quality_and_flags(hopper_medium: minari.MinariDataset) -> None:
    meta = hopper_medium.storage.metadata
    assert hopper_medium.total_steps == SIZE
    assert meta["ref_min_score"] < meta["ref_max_score"]
    _check_flags_by_replay(hopper_medium, episodes=3, limit=1000)
    episodes = list(hopper_medium.iterate_episodes())
    # Quality against the expert (shipped policy over 3 episodes): medium ~ a third of it.
    returns = [ep.rewards.sum() for ep in episodes[:-1]]  # drop the episode cut by --size
    ratio = np.mean(returns) / meta["ref_max_score"]
    assert 0.25 <= ratio <= 0.5, f"medium return {np.mean(returns):.0f} = {ratio:.2f} x ref_max"
    # The behaviour policies travel with the data.
    copies = Path(hopper_medium.storage.data_path).parent / "behaviour_policies"
    assert {p.name for p in copies.iterdir()} >= {"hopper_medium.pt", "hopper_medium.json"}


@needs_hopper_policies
def test_medium_expert_is_medium_then_expert(
    store: Path, hopper_medium: minari.MinariDataset
) -> None:
    both = _build("medium-expert")
    medium = list(hopper_medium.iterate_episodes())
    episodes = list(both.iterate_episodes())
    assert both.total_steps == 2 * SIZE
    for a, b in zip(medium, episodes[: len(medium)]):  # same seeds: the medium dataset itself
        np.testing.assert_array_equal(a.actions, b.actions)
    expert = episodes[len(medium) :]
    assert expert and sum(len(ep.actions) for ep in expert) == SIZE
    mean_medium = np.mean([ep.rewards.sum() for ep in medium[:-1]])
    mean_expert = np.mean([ep.rewards.sum() for ep in expert[:-1]])
    assert mean_expert > 1.5 * mean_medium
    assert both.storage.metadata["ref_max_score"] == hopper_medium.storage.metadata["ref_max_score"]


@needs_hopper_policies
def test_portable_build_is_the_same_policy_in_float64(
    store: Path, hopper_medium: minari.MinariDataset
) -> None:
    name = "local/hopper/medium-portable-v0"
    options = dict(size=SIZE, ref_episodes=REF_EPISODES, progress=False)
    build_locomotion("hopper", "medium", portable=True, dataset_id_override=name, **options)
    portable = minari.load_dataset(name)
    assert "--portable" in portable.storage.metadata["description"]
    default_first = next(hopper_medium.iterate_episodes())
    portable_first = next(portable.iterate_episodes())
    np.testing.assert_array_equal(default_first.observations[0], portable_first.observations[0])
    # same policy, same noise: the first actions differ by float32 rounding at most
    np.testing.assert_allclose(portable_first.actions[0], default_first.actions[0], atol=1e-6)
    assert not np.array_equal(portable_first.actions, default_first.actions)
    with pytest.raises(UserError, match="medium-replay"):
        build_locomotion("hopper", "medium-replay", portable=True, progress=False)
    assert dql_main(["data", "build", "pendulum-flip", "--portable"]) == 2


ACTIONS_DIGEST = """
import hashlib, sys
import numpy as np
from dql.builders.locomotion import PACKAGED_POLICIES
from dql.builders.policy import load_policy
policy = load_policy(PACKAGED_POLICIES / "hopper_medium.pt")
policy = policy.in_float64() if sys.argv[1] == "portable" else policy
rng = np.random.default_rng(0)
actions = [policy.act(2 * rng.standard_normal(11), rng) for _ in range(3000)]
print(hashlib.sha256(np.stack(actions).tobytes()).hexdigest())
"""


@needs_hopper_policies
@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="MKL's code paths are the test")
def test_portable_actions_do_not_depend_on_the_blas_code_path() -> None:
    """MKL_CBWR picks MKL's kernels as another CPU would: float32 actions change, portable ones
    must not (the cause of the per-CPU dataset builds in docs/datasets.md)."""
    import subprocess
    import sys

    def digest(mode: str, cbwr: str | None) -> str:
        env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
        env.update({"OMP_NUM_THREADS": "1"}, **({"MKL_CBWR": cbwr} if cbwr else {}))
        done = subprocess.run(
            [sys.executable, "-c", ACTIONS_DIGEST, mode],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    paths = (None, "COMPATIBLE", "SSE4_2")
    assert len({digest("portable", path) for path in paths}) == 1
    assert len({digest("float32", path) for path in paths}) > 1, "control: float32 should vary"


def test_existing_dataset_needs_overwrite(hopper_random: minari.MinariDataset) -> None:
    with pytest.raises(DatasetError, match="--overwrite"):
        build_locomotion("hopper", "random", size=10, ref_episodes=1, progress=False)


def test_a_relative_store_path_works(monkeypatch: pytest.MonkeyPatch) -> None:
    """MINARI_DATASETS_PATH=store (relative to the working directory, a temporary one here):
    minari 0.5.4 alone joins it twice and fails after collecting every episode."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", "relative_store")
    build_locomotion("hopper", "random", size=200, ref_episodes=1, progress=False)
    data = minari.load_dataset("local/hopper/random-v0")
    assert data.total_steps == 200
    assert (Path.cwd() / "relative_store" / "local/hopper/random-v0/data/main_data.hdf5").is_file()


@pytest.mark.slow
def test_medium_replay_from_a_resumed_sac_run(tmp_path: Path, store: Path) -> None:
    pytest.importorskip("stable_baselines3")
    torch.set_num_threads(1)
    run = tmp_path / "sac_hopper"
    # SB3 acts randomly for its first 100 steps, then takes one gradient step per env step.
    train_sac(
        "Hopper-v5", run, total_steps=150, checkpoint_every=50, eval_episodes=1, progress=False
    )
    train_sac(
        "Hopper-v5", run, total_steps=200, checkpoint_every=50, eval_episodes=1, progress=False
    )
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [50, 100, 150, 200]  # the second call resumed
    from stable_baselines3.common.save_util import load_from_pkl

    buffer = load_from_pkl(run / "replay_buffer.pkl")  # grown on resume, not wrapped round
    # 149 stored when saved at step 150, the resume's env reset drops step 150, then 49 more.
    assert (buffer.full, buffer.pos, buffer.buffer_size) == (False, 198, 200)
    dataset = _build("medium-replay", policy_dir=tmp_path, train_steps=200)
    medium = json.loads((tmp_path / "hopper_medium.json").read_text())
    assert medium["train_total_steps"] == 200  # exported from this run, not the shipped one
    episodes = list(dataset.iterate_episodes())
    # The final buffer holds 198 (above).
    assert dataset.total_steps == min(medium["train_step"], 198)
    for ep in episodes:
        assert not ep.terminations[:-1].any() and not ep.truncations[:-1].any()
        assert ep.terminations[-1] != ep.truncations[-1]


@pytest.mark.slow
def test_medium_replay_reruns_the_run_behind_the_shipped_medium(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """With only exported policies (as shipped), medium-replay retrains SAC to the medium's step,
    no further, and confirms the rerun by the actor's weights; a mismatch is said, not hidden."""
    pytest.importorskip("stable_baselines3")
    from dql.builders import locomotion

    torch.set_num_threads(1)
    tiny = locomotion.LocomotionRecipe("Hopper-v5", 200, checkpoint_every=50, eval_episodes=1)
    monkeypatch.setitem(locomotion.RECIPES, "hopper", tiny)
    original = tmp_path / "original"
    run = locomotion.train_behaviour_policies("hopper", original, None, False)
    locomotion.export_policies("hopper", run, original, recheck_episodes=1)
    step = 150  # past SB3's 100 random steps, before the run's end: the medium, as shipped
    meta = json.loads((original / "hopper_medium.json").read_text())
    space = gym.make("Hopper-v5").action_space
    save_policy(
        torch.load(run / f"actor_{step}.pt", weights_only=True),
        original / "hopper_medium",
        env_id="Hopper-v5",
        action_low=space.low,
        action_high=space.high,
        extra={**meta, "train_step": step},
    )

    def shipped_only(name: str) -> Path:
        directory = tmp_path / name
        directory.mkdir()
        for f in original.glob("hopper_*.*"):
            (directory / f.name).write_bytes(f.read_bytes())
        return directory

    faithful = shipped_only("faithful")
    build_locomotion(
        "hopper",
        "medium-replay",
        policy_dir=faithful,
        dataset_id_override="local/hopper/rerun-v0",
        ref_episodes=1,
        progress=False,
    )
    log = [
        json.loads(line) for line in (faithful / "sac_hopper/log.jsonl").read_text().splitlines()
    ]
    assert log[-1]["step"] == step  # trained to the medium checkpoint, not to the recipe's 200
    data = minari.load_dataset("local/hopper/rerun-v0")
    assert data.total_steps == step - 1  # the buffer saved at step N holds N - 1 transitions
    assert "warning" not in capsys.readouterr().out
    assert not (faithful / "hopper_medium_rerun.pt").exists()
    first = next(data.iterate_episodes())
    from stable_baselines3.common.save_util import load_from_pkl

    reference = load_from_pkl(original / "sac_hopper/replay_buffer.pkl").observations[:, 0]
    np.testing.assert_array_equal(first.observations[:-1], reference[: len(first.actions)])

    altered = shipped_only("altered")
    weights = torch.load(altered / "hopper_medium.pt", weights_only=True)
    weights["mu.bias"] += 1.0
    torch.save(weights, altered / "hopper_medium.pt")
    build_locomotion(
        "hopper",
        "medium-replay",
        policy_dir=altered,
        dataset_id_override="local/hopper/altered-v0",
        ref_episodes=1,
        progress=False,
    )
    assert "differs from" in capsys.readouterr().out
    assert (altered / "hopper_medium_rerun.pt").is_file()


def test_select_checkpoints_picks_best_and_a_third() -> None:
    log = [
        {"step": s, "eval_return_mean": r}
        for s, r in [(1, 100), (2, 900), (3, 2000), (4, 3000), (5, 1200)]
    ]
    expert, medium = select_checkpoints(log)
    assert expert["step"] == 4 and medium["step"] == 2  # 900 closest to 1000, before step 4


def test_actor_matches_stable_baselines3(tmp_path: Path) -> None:
    sac = pytest.importorskip("stable_baselines3").SAC
    model = sac(
        "MlpPolicy", "Pendulum-v1", policy_kwargs={"net_arch": [32, 32]}, device="cpu", seed=0
    )
    space = model.action_space
    path = save_policy(
        model.actor.state_dict(),
        tmp_path / "p",
        env_id="Pendulum-v1",
        action_low=space.low,
        action_high=space.high,
    )
    policy = load_policy(path)
    obs = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    expected, _ = model.predict(obs, deterministic=True)
    with torch.no_grad():
        got = policy.actor(torch.from_numpy(obs)).numpy()
        mean, log_std, _ = model.actor.get_action_dist_params(torch.from_numpy(obs))
        noise = torch.randn(8, 1)
        sampled = policy.actor(torch.from_numpy(obs), noise).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    squashed = torch.tanh(mean + log_std.exp() * noise).numpy()
    np.testing.assert_allclose(
        sampled, space.low + 0.5 * (squashed + 1) * (space.high - space.low), atol=1e-5
    )


@needs_hopper_policies
def test_shipped_policies_are_small_and_torch_only() -> None:
    for level in ("medium", "expert"):
        path = PACKAGED_POLICIES / f"hopper_{level}.pt"
        assert path.stat().st_size < 300_000
        state = torch.load(path, weights_only=True)
        assert set(state) == {f"latent_pi.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")} | {
            f"{h}.{p}" for h in ("mu", "log_std") for p in ("weight", "bias")
        }
        policy = load_policy(path)
        assert isinstance(policy.actor, SquashedGaussianActor)
        assert policy.meta["env_id"] == "Hopper-v5" and policy.meta["level"] == level
        action = policy.act(np.zeros(11), np.random.default_rng(0))
        assert action.shape == (3,) and np.all(np.abs(action) <= 1)


def test_pointmaze_controller_reaches_goals() -> None:
    register_envs()
    env_id = maze_env_id("umaze")
    controller = WaypointController.from_env(gym.make(env_id))
    assert success_rate(env_id, controller, episodes=20) >= 0.8


def test_pointmaze_dataset(store: Path) -> None:
    report = build_pointmaze("umaze-dense", size=1000, chunk=300, ref_episodes=2, progress=False)
    dataset = minari.load_dataset("local/pointmaze/umaze-dense-v0")
    assert report.transitions == dataset.total_steps == 1000
    episodes = list(dataset.iterate_episodes())
    assert [len(ep.actions) for ep in episodes] == [300, 300, 300, 100]
    for prev, ep in zip(episodes, episodes[1:]):  # one continuing trajectory, cut in chunks
        np.testing.assert_array_equal(
            prev.observations["observation"][-1], ep.observations["observation"][0]
        )
    for ep in episodes:
        assert set(ep.observations) == {"observation", "achieved_goal", "desired_goal"}
        assert not ep.terminations.any() and ep.truncations[-1] and not ep.truncations[:-1].any()
        assert np.all(ep.rewards > 0)  # dense reward exp(-distance)
    meta = dataset.storage.metadata
    assert meta["ref_min_score"] < meta["ref_max_score"]
    assert json.loads(meta["eval_env_spec"])["id"] == "PointMaze_UMazeDense-v3"


def test_cli_errors_and_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert dql_main(["data", "build", "hopper-mediocre"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "valid:" in err and "medium-replay" in err
    assert dql_main(["data", "build", "antmaze-umaze"]) == 2
    assert "D4RL/antmaze" in capsys.readouterr().err
    assert dql_main(["data", "build", "hopper-random", "--size", "0"]) == 2
    assert "--size" in capsys.readouterr().err
    assert dql_main(["data", "list"]) == 0
    names = capsys.readouterr().out.split()
    assert "walker2d-medium-expert" in names and "pointmaze-large-dense" in names
    with pytest.raises(UserError, match="valid"):
        cli.parse_name("cheetah-medium")


def test_recipes_file_matches_the_builders() -> None:
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")
    recipes = tomllib.loads((ROOT / "experiments" / "datasets" / "recipes.toml").read_text())
    for env, recipe in RECIPES.items():
        entry = recipes["locomotion"][env]
        assert (entry["env_id"], entry["train_steps"]) == (recipe.env_id, recipe.train_steps)
        assert recipes["locomotion"]["checkpoint_every"] == recipe.checkpoint_every
        assert recipes["locomotion"]["medium_fraction"] == pytest.approx(recipe.medium_fraction)
    for maze, recipe in MAZES.items():
        assert (recipes["pointmaze"][maze]["env_id"], recipes["pointmaze"][maze]["chunk"]) == (
            recipe.env_id,
            recipe.chunk,
        )


@needs_hopper_policies
def test_dataset_loads_through_dql_data(hopper_medium: minari.MinariDataset) -> None:
    data = pytest.importorskip(
        "dql.data", reason="dql/data.py (the suite's loader) is not there yet"
    )
    transitions = data.load_dataset("local/hopper/medium-v0")
    assert len(transitions) == SIZE
    assert transitions.observations.shape == transitions.next_observations.shape == (SIZE, 11)
    assert transitions.actions.shape == (SIZE, 3)
    assert transitions.terminals.sum() == sum(
        ep.terminations.sum() for ep in hopper_medium.iterate_episodes()
    )
    assert transitions.timeouts.sum() == sum(
        ep.truncations.sum() for ep in hopper_medium.iterate_episodes()
    )
    assert len(np.unique(transitions.episode_ids)) == hopper_medium.total_episodes
    meta = hopper_medium.storage.metadata
    assert transitions.info.ref_min_score == pytest.approx(meta["ref_min_score"])
    assert transitions.info.ref_max_score == pytest.approx(meta["ref_max_score"])
