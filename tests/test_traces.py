"""Evaluation traces: saved with every run, replayed to the same returns from their seeds,
labelled by how each episode ended, and rendered to video on request."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_algo import TanhMlpBC  # tests/tiny_algo.py: pytest puts tests/ on sys.path

from dql.cli import main as dql_main
from dql.data import load_dataset
from dql.errors import UserError
from dql.evaluation import evaluate
from dql.runs import read_jsonl
from dql.traces import load_traces, render_episode, replay, save_traces
from dql.training import TrainConfig, run_training


@pytest.fixture
def trained_run(pendulum_store, tmp_path):
    config = TrainConfig(
        dataset=pendulum_store,
        steps=300,
        eval_interval=150,
        eval_episodes=3,
        log_interval=100,
        checkpoint_interval=300,
        run_dir=str(tmp_path / "run"),
        progress=False,
    )
    run_training(config, TanhMlpBC, "tiny_bc")
    return tmp_path / "run"


def falling_traces(pendulum_store, directory, episodes=3):
    """Traces of a policy that pushes one way: the pole falls within a few steps."""
    info = load_dataset(pendulum_store).info
    result = evaluate(
        lambda obs: np.full((len(obs), 1), 3.0, np.float32),
        info,
        num_episodes=episodes,
        seed=7,
        ref_scores=(5.0, 200.0),
        progress=False,
        record_traces=True,
    )
    save_traces(directory, result, info=info, max_episode_steps=None, metadata={"policy": "push"})
    return result


def test_run_saves_the_final_evaluation_as_traces(trained_run):
    traces = load_traces(trained_run)
    final = read_jsonl(trained_run / "eval.jsonl")[-1]
    assert traces.meta["step"] == final["step"] == 300
    assert traces.episodes == final["episodes"]
    assert traces.meta["config"]["seed"] == 0 and traces.meta["algorithm"] == "tiny_bc"
    for i, episode in enumerate(traces.episodes):
        length = episode["length"]
        assert traces.observations[i].shape == (length + 1, 4)
        assert traces.actions[i].shape == (length, 1)
        assert traces.rewards[i].sum() == pytest.approx(episode["return"], abs=1e-9)
    assert np.abs(np.concatenate(traces.actions)).max() <= 3.0  # what the env received: clipped


def test_replay_reproduces_recorded_returns_and_catches_tampering(trained_run, capsys):
    assert dql_main(["replay", str(trained_run)]) == 0
    out = capsys.readouterr().out
    assert "all 3 episodes replay" in out and "time_limit 3" in out
    # a changed action must show up as a mismatch
    with np.load(trained_run / "traces.npz") as data:
        arrays = dict(data)
    arrays["actions"][5] = -arrays["actions"][5] - 1.0
    np.savez(trained_run / "traces.npz", **arrays)
    assert dql_main(["replay", str(trained_run)]) == 1
    assert "NO" in capsys.readouterr().out


def test_failures_are_labelled_and_replay_to_the_same_end(pendulum_store, tmp_path, capsys):
    result = falling_traces(pendulum_store, tmp_path)
    assert result.end_reasons == ["terminated"] * 3 and result.lengths.max() < 50
    traces = load_traces(tmp_path / "traces.json")
    assert traces.meta["end_reasons"] == {"time_limit": 0, "terminated": 3, "goal_reached": 0}
    replayed = replay(traces)
    assert [r.replayed_end for r in replayed] == ["terminated"] * 3
    assert all(r.matches() for r in replayed)
    assert [r.replayed_length for r in replayed] == list(result.lengths)
    assert dql_main(["replay", str(tmp_path / "traces.json")]) == 0
    assert "terminated 3" in capsys.readouterr().out


def test_evaluate_without_traces_records_nothing(pendulum_store):
    info = load_dataset(pendulum_store).info
    result = evaluate(
        lambda o: np.zeros((len(o), 1), np.float32), info, num_episodes=1, progress=False
    )
    assert "traces" not in result.extra
    with pytest.raises(ValueError):
        save_traces(".", result, info=info)


def test_traces_render_to_video(pendulum_store, tmp_path):
    falling_traces(pendulum_store, tmp_path, episodes=1)
    traces = load_traces(tmp_path)
    try:
        written = render_episode(traces, 0, tmp_path / "episode.mp4", width=64, height=64)
    except UserError as exc:
        pytest.skip(f"no offscreen OpenGL here: {exc}")
    assert written.exists() and written.stat().st_size > 1000
    import imageio.v2 as imageio

    if written.suffix == ".gif":
        frames = imageio.mimread(written)
        count, first = len(frames), frames[0]
    else:
        reader = imageio.get_reader(written, format="FFMPEG")
        count, first = reader.count_frames(), reader.get_data(0)
        reader.close()
    assert count == traces.episodes[0]["length"] + 1  # the reset frame and one per step
    assert first.shape[:2] == (64, 64)
    assert np.ptp(np.asarray(first)) > 0  # something was drawn


def test_traces_flag_turns_them_off_and_latency_is_its_own_command(
    pendulum_store, tmp_path, capsys
):
    """Training writes no latency (a benchmark in every run); `dql latency RUN_DIR` times the
    trained agent and writes latency.json with the checkpoint it used."""
    from baselines import bc

    config = bc.Config(
        dataset=pendulum_store,
        steps=50,
        eval_interval=50,
        eval_episodes=1,
        log_interval=50,
        checkpoint_interval=50,
        run_dir=str(tmp_path / "run"),
        progress=False,
        save_traces=False,
    )
    bc.train(config)
    assert not (tmp_path / "run" / "traces.json").exists()
    assert not (tmp_path / "run" / "latency.json").exists()
    assert dql_main(["latency", str(tmp_path / "run")]) == 0
    latency = json.loads((tmp_path / "run" / "latency.json").read_text())
    assert latency["devices"]["cpu"]["1"]["ms_per_action"] > 0
    assert latency["devices"]["cpu"]["10"]["calls"] > 0
    assert latency["checkpoint"] == "checkpoints/last.pt"
    assert "ms per action at batch 1" in capsys.readouterr().out
    assert dql_main(["latency", str(tmp_path)]) == 2  # not a run directory: one error line
    assert "not a run directory" in capsys.readouterr().err


def test_gif_is_written_when_asked(tmp_path):
    from PIL import Image

    from dql.traces import write_video

    frames = [np.full((8, 8, 3), 40 * i, np.uint8) for i in range(5)]
    written = write_video(frames, tmp_path / "clip.gif", fps=10)
    with Image.open(written) as gif:
        assert gif.n_frames == 5


def test_latency_is_per_call_and_per_action_of_a_known_cost():
    # an act that sleeps 4 ms a call: the median is at least that, per action divides by batch,
    # and a multi-second planner is called a handful of times, not for minutes
    import time

    from dql.latency import time_act

    class Sleeper:
        def __init__(self, seconds: float) -> None:
            self.seconds, self.calls = seconds, 0

        def act(self, observations: np.ndarray) -> np.ndarray:
            self.calls += 1
            time.sleep(self.seconds)
            return observations[:, :1]

    timed = time_act(Sleeper(0.004), 3, 10, min_seconds=0.1)
    assert 4.0 <= timed["ms_per_call"] < 200.0
    assert timed["ms_per_action"] == pytest.approx(timed["ms_per_call"] / 10)
    assert timed["p90_ms_per_call"] >= timed["ms_per_call"] and timed["calls"] >= 5
    planner = Sleeper(0.3)
    assert time_act(planner, 3, 1, min_seconds=0.1)["ms_per_call"] >= 300.0
    assert planner.calls <= 4
