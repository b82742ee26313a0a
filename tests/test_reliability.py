"""Nothing lost, nothing trusted blindly: crash and resume, interrupts, divergence, safe loading,
and every bad input at the edge answered by one clear line on stderr and a non-zero exit.

Training subprocesses run this file's `main` (a tiny agent through `run_cli`); they stall on
purpose at a chosen step (env DQL_TEST_STALL="STEP:MARKER") so signals land where the test
wants them.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

import dql.cli
from dql.cli import run_cli
from dql.errors import ConfigError, UserError
from dql.nets import make_optimizer, mlp, polyak_update
from dql.runs import RunDirectory, atomic_torch_save, safe_torch_load
from dql.training import TrainConfig, run_training

TESTS_DIR = Path(__file__).resolve().parent
TINY = {
    "steps": 600,
    "batch_size": 64,
    "eval_interval": 300,
    "eval_episodes": 2,
    "log_interval": 50,
    "checkpoint_interval": 100,
    "max_episode_steps": 50,
    "num_threads": 1,
}


class NoisyAgent:
    """Behaviour cloning whose update draws from every RNG the loop must restore (torch, numpy,
    Python) and whose state holds what real agents hold: an EMA copy, an optimiser, an LR
    schedule and a step counter. Acts with the EMA policy."""

    def __init__(self, observation_dim: int, action_dim: int, max_action: float, config) -> None:
        self.policy = mlp(observation_dim, action_dim, (32, 32))
        self.ema = copy.deepcopy(self.policy)
        self.optimizer = make_optimizer(self.policy.parameters(), 3e-3)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, config.steps)
        self.max_action = max_action
        self.steps = 0
        stall = os.environ.get("DQL_TEST_STALL")
        self.stall_at, self.marker = (
            (int(stall.split(":")[0]), stall.split(":", 1)[1]) if stall else (None, None)
        )

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.steps += 1
        if self.steps == self.stall_at:  # tell the test we are here, then give it time to act
            Path(self.marker).write_text(str(self.steps))
            time.sleep(1.0)
        noise = 0.1 * torch.randn_like(batch["actions"])
        keep = torch.as_tensor(np.random.rand(len(batch["rewards"])) < 0.9, dtype=torch.float32)
        scale = 1.0 + 0.1 * random.random()
        predicted = torch.tanh(self.policy(batch["observations"])) * self.max_action
        loss = (((predicted - batch["actions"] - noise) ** 2).mean(-1) * keep).mean() * scale
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        if self.steps % 5 == 0:
            polyak_update(self.ema, self.policy, 0.1)
        return {"loss": loss, "lr": torch.tensor(self.schedule.get_last_lr()[0])}

    @torch.no_grad()
    def act(self, observations: np.ndarray) -> np.ndarray:
        return (torch.tanh(self.ema(torch.as_tensor(observations))) * self.max_action).numpy()

    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.steps = int(state["steps"])


def train_noisy(config: TrainConfig) -> dict[str, Any]:
    return run_training(config, NoisyAgent, "noisy")


def main(argv: list[str]) -> int:
    return run_cli(TrainConfig, train_noisy, "noisy", argv)


def flags(dataset: str, run_dir: Path, **overrides: Any) -> list[str]:
    args = ["--dataset", dataset, "--run-dir", str(run_dir), "--no-progress"]
    for key, value in {**TINY, **overrides}.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def start_training(dataset: str, run_dir: Path, stall_at: int, marker: Path) -> subprocess.Popen:
    script = (
        f"import sys; sys.path.insert(0, {str(TESTS_DIR)!r}); import torch; "
        "torch.set_num_threads(1); from test_reliability import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DQL_TEST_STALL": f"{stall_at}:{marker}"}
    return subprocess.Popen(
        [sys.executable, "-c", script, *flags(dataset, run_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(marker: Path, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if process.poll() is not None:
            raise AssertionError(f"training exited early: {process.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("training never reached the stall step")
        time.sleep(0.02)


def assert_tree_equal(a: Any, b: Any, path: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_tree_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_tree_equal(x, y, f"{path}.{i}")
    else:
        assert a == b, path


def without_wall_time(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]


def assert_same_run(reference: Path, other: Path) -> None:
    """Metrics, evaluations, scores and final weights equal to the last bit (wall time aside)."""
    a, b = RunDirectory(reference), RunDirectory(other)
    assert b.status()["status"] == "complete"
    assert [r["step"] for r in b.rows("metrics")] == list(range(50, 601, 50))
    assert a.rows("metrics") == b.rows("metrics")
    assert [r["step"] for r in b.rows("eval")] == [300, 600]
    assert without_wall_time(a.rows("eval")) == without_wall_time(b.rows("eval"))
    assert without_wall_time([a.result()]) == without_wall_time([b.result()])
    for name in ("last.pt", "eval_300.pt", "eval_600.pt"):
        saved = [safe_torch_load(run / "checkpoints" / name) for run in (reference, other)]
        for checkpoint in saved:
            checkpoint.get("loop", {}).pop("wall_time", None)
        assert_tree_equal(*saved, name)


@pytest.fixture(scope="module")
def reference(pendulum_dataset: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run, in-process, to compare interrupted-and-resumed runs with."""
    root, dataset_id = pendulum_dataset
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    mp = pytest.MonkeyPatch()
    mp.setenv("MINARI_DATASETS_PATH", root)
    try:
        assert main(flags(dataset_id, run_dir)) == 0
    finally:
        mp.undo()
    return run_dir


# --------------------------------------------------------------------------- crash and resume


def test_sigkill_then_resume_equals_an_uninterrupted_run(reference, pendulum_store, tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "stalled"
    process = start_training(pendulum_store, run_dir, 351, marker)
    wait_for(marker, process)
    process.kill()
    process.communicate()
    run = RunDirectory(run_dir)
    assert run.status()["status"] == "running"  # killed: nothing got to say otherwise
    assert safe_torch_load(run.checkpoint_path)["loop"]["step"] == 300
    assert [r["step"] for r in run.rows("metrics")][-1] == 350  # logged after the checkpoint
    # a checkpoint write cut short by the kill leaves only a temp file, never read back
    (run_dir / "checkpoints" / ".last.pt.cut.tmp").write_bytes(b"half a checkpoint")

    assert main(flags(pendulum_store, run_dir) + ["--resume"]) == 0
    assert_same_run(reference, run_dir)


def test_a_cut_checkpoint_write_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_torch_save({"weights": torch.ones(3)}, path)

    def torn_save(obj: Any, file: str) -> None:
        Path(file).write_bytes(b"\x80\x02torn")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"weights": torch.zeros(3)}, path)
    assert torch.equal(safe_torch_load(path)["weights"], torch.ones(3))
    assert os.listdir(tmp_path) == ["last.pt"]


# a background job (`cmd &` without job control) starts with SIGINT ignored, as do its children
SIGINT_IGNORED = pytest.mark.skipif(
    signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
    reason="SIGINT is ignored in this process (a background job): Ctrl-C cannot be tested",
)


@pytest.mark.slow
@SIGINT_IGNORED
def test_ctrl_c_checkpoints_says_how_to_resume_and_exits_130(reference, pendulum_store, tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "stalled"
    process = start_training(pendulum_store, run_dir, 251, marker)
    wait_for(marker, process)
    process.send_signal(signal.SIGINT)  # lands while step 251 stalls
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    run = RunDirectory(run_dir)
    assert err.strip().splitlines()[-1] == (
        f"SIGINT at step 251: checkpoint saved in {run.checkpoint_path}; "
        "run the same command with --resume to continue"
    )
    # the step under way finishes, then that consistent state is saved
    assert run.status() == {"status": "interrupted", "step": 251}
    assert safe_torch_load(run.checkpoint_path)["loop"]["step"] == 251

    assert main(flags(pendulum_store, run_dir) + ["--resume"]) == 0
    assert_same_run(reference, run_dir)


@SIGINT_IGNORED
@pytest.mark.parametrize("signals", [("SIGTERM",), ("SIGINT", "SIGINT")])
def test_sigterm_and_a_second_ctrl_c(
    signals, reference, pendulum_store, tmp_path, monkeypatch, capsys
):
    """In-process (the signals are sent to this very process while step 251 stalls)."""
    run_dir, marker = tmp_path / "run", tmp_path / "stalled"
    monkeypatch.setenv("DQL_TEST_STALL", f"251:{marker}")

    def send() -> None:
        while not marker.exists():
            time.sleep(0.02)
        for name in signals:
            os.kill(os.getpid(), getattr(signal, name))
            time.sleep(0.1)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    assert main(flags(pendulum_store, run_dir)) == 130
    sender.join()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last_line = err.strip().splitlines()[-1]
    run = RunDirectory(run_dir)
    if signals == ("SIGTERM",):  # job preemption: the same as one Ctrl-C
        assert last_line.startswith("SIGTERM at step 251: checkpoint saved in")
        assert run.status() == {"status": "interrupted", "step": 251}
        assert safe_torch_load(run.checkpoint_path)["loop"]["step"] == 251
    else:  # a second Ctrl-C stops mid-update: that half-done state is not saved
        assert last_line == (
            f"interrupted during step 251; --resume continues from the last checkpoint, "
            f"{run.checkpoint_path}"
        )
        assert run.status() == {"status": "interrupted", "step": 250}
        assert safe_torch_load(run.checkpoint_path)["loop"]["step"] == 200
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored

    monkeypatch.delenv("DQL_TEST_STALL")
    assert main(flags(pendulum_store, run_dir) + ["--resume"]) == 0
    assert_same_run(reference, run_dir)


# --------------------------------------------------------------------------- divergence


def diverging(mode: str) -> type:
    class Diverging(NoisyAgent):
        def update(self, batch):
            metrics = super().update(batch)
            if self.steps == 250 and mode == "weights":
                with torch.no_grad():
                    self.policy[0].weight.fill_(float("nan"))
            if self.steps == 250 and mode == "ema":  # losses stay finite: only the state shows it
                with torch.no_grad():
                    self.ema[-1].bias.fill_(float("inf"))
            if self.steps >= 250 and mode == "metric":
                metrics["loss"] = metrics["loss"] * float("nan")
            return metrics

    return Diverging


@pytest.mark.parametrize(
    ("mode", "log_interval", "message"),
    [
        ("weights", 50, "non-finite loss at step 300"),
        ("metric", 1000, "non-finite loss at step 300"),  # not logged yet: caught before the eval
        ("ema", 50, "non-finite values in the agent's ema.4.bias at step 300"),
    ],
)
def test_divergence_stops_clearly_and_keeps_the_last_good_checkpoint(
    mode, log_interval, message, pendulum_store, tmp_path, capsys
):
    run_dir = tmp_path / "run"

    def train(config: TrainConfig) -> dict[str, Any]:
        return run_training(config, diverging(mode), "noisy")

    argv = flags(pendulum_store, run_dir, log_interval=log_interval, eval_interval=150)
    assert run_cli(TrainConfig, train, "noisy", argv) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {message}; the run is marked failed, the last good checkpoint")
    status = RunDirectory(run_dir).status()
    assert status["status"] == "failed" and status["error"] == f"diverged: {message}"
    checkpoint = safe_torch_load(run_dir / "checkpoints" / "last.pt")
    assert checkpoint["loop"]["step"] == 200
    flat = torch.cat([t.flatten() for t in checkpoint["agent"]["policy"].values()])
    assert torch.isfinite(flat).all()
    assert torch.isfinite(
        torch.cat([t.flatten() for t in checkpoint["agent"]["ema"].values()])
    ).all()
    evals = [r["step"] for r in RunDirectory(run_dir).rows("eval")]
    assert evals == [150] and not (run_dir / "checkpoints" / "eval_300.pt").exists()


def test_a_non_finite_action_stops_the_evaluation_before_the_simulator(
    pendulum_store, tmp_path, capsys
):
    """A policy whose weights stay finite but whose act() emits NaN at the second evaluation:
    one line naming the algorithm, the step and the episode; MuJoCo never sees the NaN (it
    would write MUJOCO_LOG.TXT into the working directory); the last good checkpoint stays."""

    class NanActing(NoisyAgent):
        def act(self, observations):
            actions = super().act(observations)
            if self.steps >= 300 and self.acted >= 3:
                actions[1, 0] = np.nan
            self.acted = self.acted + 1 if self.steps >= 300 else 0
            return actions

        acted = 0

    def train(config: TrainConfig) -> dict[str, Any]:
        return run_training(config, NanActing, "nan-acting")

    run_dir = tmp_path / "run"
    argv = flags(pendulum_store, run_dir, eval_interval=150)
    assert run_cli(TrainConfig, train, "nan-acting", argv) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "nan-acting produced a non-finite action (nan) at step 3 of episode 1" in err, err
    assert "the last good checkpoint" in err
    assert safe_torch_load(run_dir / "checkpoints" / "last.pt")["loop"]["step"] == 200
    assert RunDirectory(run_dir).status()["status"] == "failed"
    assert not (Path.cwd() / "MUJOCO_LOG.TXT").exists()


def test_an_unexpected_exception_in_an_agent_marks_the_run_failed(pendulum_store, tmp_path):
    class Buggy(NoisyAgent):
        def update(self, batch):
            if self.steps == 120:
                raise ZeroDivisionError("a bug in the agent")
            return super().update(batch)

    config = TrainConfig(dataset=pendulum_store, run_dir=str(tmp_path / "run"), progress=False)
    config.steps, config.checkpoint_interval, config.eval_interval = 600, 100, 300
    with pytest.raises(ZeroDivisionError):  # a bug is not a user error: its traceback is kept
        run_training(config, Buggy, "noisy")
    status = RunDirectory(tmp_path / "run").status()
    assert status == {
        "status": "failed",
        "step": 120,
        "error": "ZeroDivisionError: a bug in the agent",
    }


# --------------------------------------------------------------------------- safe loading


class Payload:
    """Unpickling this would run code (create a directory): weights_only loading must refuse."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (str(self.target),))


def test_checkpoints_load_weights_only_and_refuse_code(reference, pendulum_store, tmp_path, capsys):
    # a real checkpoint is plain tensors and containers
    torch.load(reference / "checkpoints" / "last.pt", weights_only=True)
    target = tmp_path / "pwned"
    torch.save({"agent": Payload(target)}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="evil.pt: refused to load: not a plain weights checkpoint"):
        safe_torch_load(tmp_path / "evil.pt")
    assert not target.exists()

    run_dir = tmp_path / "run"  # a finished run whose result was lost: resuming loads last.pt
    shutil.copytree(reference, run_dir)
    (run_dir / "result.json").unlink()
    shutil.copy(tmp_path / "evil.pt", run_dir / "checkpoints" / "last.pt")
    assert main(flags(pendulum_store, run_dir) + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused to load" in err and not target.exists()

    shutil.copy(run_dir / "checkpoints" / "eval_300.pt", run_dir / "checkpoints" / "last.pt")
    assert main(flags(pendulum_store, run_dir) + ["--resume"]) == 2
    assert "is not a training checkpoint (no agent" in capsys.readouterr().err

    (run_dir / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    assert main(flags(pendulum_store, run_dir) + ["--resume"]) == 2
    assert "refused to load" in capsys.readouterr().err


# --------------------------------------------------------------------------- bad input at the edges


def write_pendulum_hdf5(path: Path, nan_rewards: int = 0, observation_dim: int = 4) -> str:
    rng = np.random.default_rng(0)
    n = 300
    rewards = np.ones(n, np.float32)
    rewards[:nan_rewards] = np.nan
    with h5py.File(path, "w") as f:
        f["observations"] = rng.normal(size=(n, observation_dim)).astype(np.float32)
        f["actions"] = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
        f["rewards"] = rewards
        f["terminals"] = np.zeros(n, bool)
        f["timeouts"] = (np.arange(n) % 100 == 99).astype(bool)
    return str(path)


def one_clear_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def cli(capsys):
    def run(argv: list[str]) -> tuple[int, str]:
        code = main(argv)
        return code, capsys.readouterr().err

    return run


def test_unknown_algorithm(capsys):
    assert dql.cli.main(["train", "nope"]) == 2
    assert one_clear_line(capsys.readouterr().err).startswith("error: unknown algorithm 'nope'")


EDGE_CASES = {
    "unknown dataset": (["--dataset", "nope"], "unknown dataset 'nope'"),
    "dataset not in the store": (["--dataset", "test/absent/x-v0"], "not in the local store"),
    "missing file": (["--dataset", "{tmp}/absent.hdf5"], "absent.hdf5: no such file"),
    "negative steps": (["--steps", "-5"], "--steps must be a positive integer, got -5"),
    "batch size 0": (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    "negative eval seed": (["--eval-seed", "-1"], "--eval-seed must be >= 0"),
    "eval env mismatch": (["--env-id", "Hopper-v5"], "Hopper-v5 has observation size 11"),
    "unknown env": (["--env-id", "Nope-v0"], "cannot create evaluation env Nope-v0"),
    "device": (["--device", "tpu"], "--device must be cpu, cuda, cuda:N or auto"),
}


@pytest.mark.parametrize("case", EDGE_CASES)
def test_bad_flags_get_one_clear_line(case, cli, pendulum_store, tmp_path):
    extra, expected = EDGE_CASES[case]
    extra = [arg.replace("{tmp}", str(tmp_path)) for arg in extra]
    code, err = cli(flags(pendulum_store, tmp_path / "run") + extra)
    assert code == 2
    assert expected in one_clear_line(err)
    assert not (tmp_path / "run" / "config.json").exists()  # nothing half-started


def test_a_value_outside_a_choice_is_refused_before_anything_starts(cli, pendulum_store, tmp_path):
    """Choices are Literal fields: tyro refuses others naming the flag and listing the choices;
    configs built in code or from a sweep file get the same check from validate()."""
    code, err = cli(flags(pendulum_store, tmp_path / "run") + ["--reward-transform", "iql"])
    assert code == 2 and "Traceback" not in err
    assert "invalid choice 'iql'" in err and "--reward-transform" in err and "zscore" in err
    assert not (tmp_path / "run" / "config.json").exists()
    from baselines import mpc, td3bc
    from dql import diffusion_ql, nets
    from dql.training import literal_choices

    with pytest.raises(ConfigError, match="--reward-transform must be one of none, zscore"):
        td3bc.Config(reward_transform="iql").validate()
    with pytest.raises(ConfigError, match="--q-gradient must be one of chain, approx, got 'edp'"):
        diffusion_ql.DiffusionQLConfig(q_gradient="edp").validate()
    assert set(literal_choices(mpc.Config)["activation"]) == set(nets.ACTIVATIONS)
    assert literal_choices(td3bc.Config)["precision"] == ("fp32", "bf16")


def test_bad_dataset_files_get_one_clear_line(cli, tmp_path):
    (tmp_path / "garbage.hdf5").write_bytes(b"\x00 not an hdf5 file" * 64)
    cases = {
        str(tmp_path / "garbage.hdf5"): "corrupt or unreadable HDF5 file",
        write_pendulum_hdf5(tmp_path / "nan.hdf5", nan_rewards=3): "field 'rewards' has 3 NaN/inf",
        write_pendulum_hdf5(tmp_path / "wide.hdf5", observation_dim=6): (
            "InvertedPendulum-v5 has observation size 4 and action size 1, but dataset"
        ),
    }
    for dataset, expected in cases.items():
        scores = ["--ref-min-score", "0", "--ref-max-score", "100"]
        argv = flags(dataset, tmp_path / "run") + ["--env-id", "InvertedPendulum-v5", *scores]
        code, err = cli(argv)
        assert code == 2 and expected in one_clear_line(err), dataset


def test_download_without_network_gets_one_clear_line(cli, pendulum_store, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, err = cli(flags("test/absent/x-v0", tmp_path / "run") + ["--download"])
    assert code == 2 and "download" in one_clear_line(err)


def test_unwritable_output_directory(cli, pendulum_store, tmp_path):
    (tmp_path / "a_file").write_text(
        "not a directory"
    )  # tests run as root: chmod would not stop us
    code, err = cli(flags(pendulum_store, tmp_path / "a_file" / "run"))
    assert code == 2 and "is not writable" in one_clear_line(err)


def test_existing_run_directory_needs_resume_and_the_same_config(
    cli, reference, pendulum_store, tmp_path
):
    before = (reference / "status.json").read_text()
    code, err = cli(flags(pendulum_store, reference))
    assert code == 2 and "already holds a run; pass --resume" in one_clear_line(err)
    code, err = cli(flags(pendulum_store, reference, batch_size=32) + ["--resume"])
    line = one_clear_line(err)
    assert code == 2 and "cannot resume: config differs" in line
    assert "batch_size: saved 64 vs now 32" in line
    assert (reference / "status.json").read_text() == before  # the finished run is untouched
    # what may change on resume does not count as a difference
    code, err = cli(flags(pendulum_store, reference, num_threads=2) + ["--resume", "--progress"])
    assert code == 0 and err == ""


def test_resume_refuses_a_dataset_that_changed(cli, tmp_path):
    dataset = write_pendulum_hdf5(tmp_path / "pendulum.hdf5")
    run_dir = tmp_path / "run"
    options = ["--env-id", "InvertedPendulum-v5", "--ref-min-score", "0", "--ref-max-score", "100"]
    argv = flags(dataset, run_dir, steps=100, eval_interval=100, eval_episodes=1) + options
    assert cli(argv)[0] == 0
    (run_dir / "result.json").unlink()  # as if killed after its last checkpoint
    with h5py.File(dataset, "a") as f:
        f["rewards"][0] = 2.0
    code, err = cli(argv + ["--resume"])
    assert code == 2 and "the dataset" in one_clear_line(err) and "changed since the run" in err


def test_usage_errors_from_tyro_are_printed_not_raised(cli, pendulum_store, tmp_path):
    for bad in (["--steps", "abc"], ["--no-such-flag", "1"]):
        code, err = cli(flags(pendulum_store, tmp_path / "run") + bad)
        assert code == 2 and "Traceback" not in err
        assert bad[0] in err and "dql-noisy --help" in err
    assert not (tmp_path / "run").exists()
    assert cli(["--help"])[0] == 0


def test_a_saved_config_json_that_is_not_json(cli, pendulum_store, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{ torn")
    code, err = cli(flags(pendulum_store, run_dir) + ["--resume"])
    assert code == 2 and "config.json is not a run's config" in one_clear_line(err)


def test_the_real_command_line(tmp_path):
    """`python -m dql.cli train ...` as a user types it: one line, exit 2, no traceback."""
    cases = {
        ("train", "nope"): "error: unknown algorithm 'nope'",
        ("train", "bc", "--steps", "0"): "error: --steps must be a positive integer, got 0",
    }
    for argv, expected in cases.items():
        done = subprocess.run(
            [sys.executable, "-m", "dql.cli", *argv],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS_DIR.parent)},
        )
        assert done.returncode == 2, done.stderr
        assert one_clear_line(done.stderr).startswith(expected)


@dataclasses.dataclass
class WidthsConfig(TrainConfig):
    hidden: tuple[int, ...] = (32, 32)
    """A tuple field, as every algorithm has: config.json holds it as a JSON list."""


def test_resume_compares_configs_as_saved(pendulum_store, tmp_path):
    config = WidthsConfig(
        dataset=pendulum_store, run_dir=str(tmp_path / "run"), progress=False, **TINY
    )
    config.steps = config.eval_interval = config.checkpoint_interval = 100
    first = run_training(config, NoisyAgent, "noisy")
    (tmp_path / "run" / "result.json").unlink()  # as if killed after its last checkpoint
    again = run_training(dataclasses.replace(config, resume=True), NoisyAgent, "noisy")
    assert without_wall_time([again]) == without_wall_time([first])
