"""Sweeps: malformed files fail in one line; a tiny sweep runs, records a crash without stopping the
others, resumes a killed run from its checkpoint, retries failed runs only when asked, and never
trains a finished run twice; its tables equal a recomputation from the run files; Ray in local
mode; the real bc/td3bc algorithms through the sweep."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dql import registry
from dql.cli import main as dql_main
from dql.errors import ConfigError
from dql.sweep import group_by_task, load_sweep, plan_jobs, plan_runs, run_sweep

TESTS_DIR = str(Path(__file__).resolve().parent)
TINY = "tiny_algo"  # tests/tiny_algo.py


@pytest.fixture
def tiny_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two algorithm names served by the tiny BC module under tests/."""
    monkeypatch.setitem(registry.ALGORITHMS, "tiny_a", TINY)
    monkeypatch.setitem(registry.ALGORITHMS, "tiny_b", TINY)


@pytest.fixture
def counter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every training of a tiny run appends its run directory here (worker processes too)."""
    file = tmp_path / "trainings.txt"
    monkeypatch.setenv("TINY_ALGO_COUNTER", str(file))
    return file


def trained(counter: Path) -> list[str]:
    return [Path(line).parts[-3] + "/" + Path(line).name for line in counter.read_text().split()]


def write_sweep(path: Path, dataset: str, body: str, **fields: object) -> Path:
    head = {
        "algorithms": ["tiny_a", "tiny_b"],
        "datasets": [dataset],
        "seeds": [0, 1],
        "steps": 60,
        "eval_interval": 30,
        "eval_episodes": 2,
        "log_interval": 30,
        "checkpoint_interval": 30,
        "keep_eval_checkpoints": False,
        **fields,
    }
    lines = [f"{k} = {json.dumps(v)}" for k, v in head.items()]
    path.write_text("\n".join(lines) + "\n" + body)
    return path


# Long enough that a run is still training when the signal reaches it: on a fast CPU BC's 3000
# pendulum steps ended before a SIGTERM to the Ray driver had reached the task.
LONG_STEPS = 20_000


def write_long_sweep(tmp_path: Path, dataset: str, algorithm: str) -> Path:
    """One seed of `algorithm`, LONG_STEPS steps, a checkpoint every 50: to kill mid-run."""
    return write_sweep(
        tmp_path / "long.toml",
        dataset,
        "",
        algorithms=[algorithm],
        seeds=[0],
        steps=LONG_STEPS,
        eval_interval=LONG_STEPS,
        log_interval=50,
        checkpoint_interval=50,
    )


# --------------------------------------------------------------------------- malformed files

MALFORMED = {
    "bad_toml": ("algorithms = [tiny_a", "malformed TOML"),
    "missing_keys": ('algorithms = ["tiny_a"]\nseeds = [0]', "missing key(s) datasets"),
    "unknown_algorithm": (
        'algorithms = ["nope"]\ndatasets = ["x/y/z-v0"]\nseeds = [0]',
        "unknown algorithm 'nope'",
    ),
    "unknown_field": (
        'algorithms = ["tiny_a"]\ndatasets = ["x/y/z-v0"]\nseeds = [0]\nlearning_rat = 1e-3',
        "unknown config field 'learning_rat'",
    ),
    "unknown_override_field": (
        'algorithms = ["tiny_a"]\ndatasets = ["x/y/z-v0"]\nseeds = [0]\n'
        "[overrides.tiny_a]\nwidth = 3",
        "unknown config field 'width'",
    ),
    "override_not_in_sweep": (
        'algorithms = ["tiny_a"]\ndatasets = ["x/y/z-v0"]\nseeds = [0]\n[overrides.tiny_b]\nhidden = 3',
        "not in this sweep's algorithms",
    ),
    "seeds_not_ints": (
        'algorithms = ["tiny_a"]\ndatasets = ["x/y/z-v0"]\nseeds = ["0", 1]',
        "seeds must be a non-empty list of integers",
    ),
    "seeds_not_list": (
        'algorithms = ["tiny_a"]\ndatasets = ["x/y/z-v0"]\nseeds = 3',
        "seeds must be a non-empty list of integers",
    ),
    "wrong_type": (
        'algorithms = ["tiny_a"]\ndatasets = ["x/y/z-v0"]\nseeds = [0]\nsteps = "many"',
        "steps = 'many' should be int",
    ),
    "wrong_type_of_an_optional_field": (  # a None default says nothing; the annotation does
        'algorithms = ["tiny_a"]\ndatasets = ["x/y/z-v0"]\nseeds = [0]\nref_min_score = "low"',
        "ref_min_score = 'low' should be float | None",
    ),
    "not_a_choice": (
        'algorithms = ["tiny_a"]\ndatasets = ["x/y/z-v0"]\nseeds = [0]\nreward_transform = "sqrt"',
        "reward_transform = 'sqrt' should be one of 'none'",
    ),
    "renamed_field": (
        'algorithms = ["diffusion_ql"]\ndatasets = ["x/y/z-v0"]\nseeds = [0]\n'
        "[overrides.diffusion_ql]\nhidden_dim = 64",
        "unknown config field 'hidden_dim' for diffusion_ql (renamed to 'hidden')",
    ),
    "reserved_field": (
        'algorithms = ["tiny_a"]\ndatasets = ["x/y/z-v0"]\nseeds = [0]\nseed = 4',
        "'seed' is set by the sweep itself",
    ),
    "bad_number": (
        'algorithms = ["tiny_a"]\ndatasets = ["x/y/z-v0"]\nseeds = [0]\nsteps = -5',
        "--steps must be a positive integer",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_sweep_file_is_one_error_line(case, tiny_registry, tmp_path, capsys):
    text, message = MALFORMED[case]
    file = tmp_path / f"{case}.toml"
    file.write_text(text + "\n")
    code = dql_main(["sweep", str(file), "--out", str(tmp_path / "out"), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out" / "tiny_a").exists()


def test_missing_sweep_file(tmp_path, capsys):
    assert dql_main(["sweep", str(tmp_path / "nope.toml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_config_precedence_and_batched_seed_groups(tiny_registry, tmp_path):
    file = write_sweep(
        tmp_path / "s.toml",
        "x/pendulum/mixed-v0",
        "[overrides.tiny_b]\nsteps = 40\nhidden = 8\n",
        steps=100,
    )
    sweep = load_sweep(file)
    runs = plan_runs(sweep, tmp_path / "out")
    by_key = {r.key: r for r in runs}
    assert [r.key for r in runs] == [
        "tiny_a/pendulum-mixed/seed_0",
        "tiny_a/pendulum-mixed/seed_1",
        "tiny_b/pendulum-mixed/seed_0",
        "tiny_b/pendulum-mixed/seed_1",
    ]
    assert by_key["tiny_a/pendulum-mixed/seed_1"].config["steps"] == 100  # sweep-wide
    assert by_key["tiny_b/pendulum-mixed/seed_1"].config["steps"] == 40  # per-algorithm override
    assert by_key["tiny_b/pendulum-mixed/seed_1"].config["hidden"] == 8
    assert "hidden" not in by_key["tiny_a/pendulum-mixed/seed_0"].config  # algorithm default
    assert by_key["tiny_b/pendulum-mixed/seed_1"].run_dir == str(
        tmp_path / "out" / "tiny_b" / "pendulum-mixed" / "seed_1"
    )
    groups = group_by_task(runs)
    assert {k: [r.seed for r in v] for k, v in groups.items()} == {
        ("tiny_a", "x/pendulum/mixed-v0"): [0, 1],
        ("tiny_b", "x/pendulum/mixed-v0"): [0, 1],
    }
    assert [len(job) for job in plan_jobs(runs)] == [1, 1, 1, 1]


def test_sweep_defaults_and_overrides_from_the_hyperparameter_table(tmp_path):
    pytest.importorskip("baselines.td3bc")
    from dql.hyperparams import task_hyperparams
    from dql.registry import load_algorithm

    config_cls = load_algorithm("td3bc").Config
    table = task_hyperparams("td3bc", "mujoco/hopper/medium-v0", config_cls)
    file = tmp_path / "s.toml"
    file.write_text(
        'algorithms = ["td3+bc"]\ndatasets = ["mujoco/hopper/medium-v0"]\nseeds = [3]\nsteps = 7\n'
    )
    (run,) = plan_runs(load_sweep(file), tmp_path)
    assert run.algorithm == "td3bc" and run.config["steps"] == 7
    for key, value in table.items():
        if key != "steps":
            assert run.config[key] == value


# --------------------------------------------------------------------------- running


@pytest.mark.slow
def test_tiny_sweep_crash_rerun_retry_and_table(
    tiny_registry, pendulum_store, counter, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "out"
    file = write_sweep(
        tmp_path / "tiny.toml", pendulum_store, "[overrides.tiny_b]\ncrash_seed = 1\nhidden = 16\n"
    )

    # 1. tiny_b seed 1 crashes at step 50; the others finish regardless
    monkeypatch.setenv("TINY_ALGO_CRASH", "1")
    assert dql_main(["sweep", str(file), "--out", str(out), "--workers", "2"]) == 1
    crashed = out / "tiny_b" / "pendulum-mixed" / "seed_1"
    status = json.loads((crashed / "status.json").read_text())
    assert status["status"] == "failed" and "crashed on purpose" in status["error"]
    sweep_status = json.loads((out / "sweep_status.json").read_text())
    assert sweep_status["counts"] == {"complete": 3, "failed": 1}
    assert "crashed on purpose" in sweep_status["runs"]["tiny_b/pendulum-mixed/seed_1"]["error"]
    assert "crashed on purpose" in (out / "sweep.log").read_text()
    assert sorted(trained(counter)) == [
        "tiny_a/seed_0",
        "tiny_a/seed_1",
        "tiny_b/seed_0",
        "tiny_b/seed_1",
    ]
    finished = sorted(out.glob("*/pendulum-mixed/seed_*/result.json"))
    assert len(finished) == 3
    mtimes = {p: p.stat().st_mtime_ns for p in finished}

    # 2. a plain rerun trains nothing: complete runs are skipped, the failed one is kept
    monkeypatch.delenv("TINY_ALGO_CRASH")
    capsys.readouterr()
    assert dql_main(["sweep", str(file), "--out", str(out)]) == 1
    assert "kept failed tiny_b/pendulum-mixed/seed_1" in capsys.readouterr().out
    assert len(trained(counter)) == 4

    # 3. --retry-failed reruns only the failed run, from scratch, keeping the old one aside
    assert dql_main(["sweep", str(file), "--out", str(out), "--retry-failed"]) == 0
    assert trained(counter)[4:] == ["tiny_b/seed_1"]
    assert {p: p.stat().st_mtime_ns for p in finished} == mtimes
    assert json.loads((crashed / "status.json").read_text())["status"] == "complete"
    aside = json.loads((crashed.parent / "seed_1.failed-1" / "status.json").read_text())
    assert aside["status"] == "failed"
    assert json.loads((out / "sweep_status.json").read_text())["counts"] == {"complete": 4}

    # 4. the table's numbers are those of the run files, recomputed by hand
    from dql.tables import make_tables

    report, table, written = make_tables(out, tmp_path / "tables", reference="tiny_a", reps=200)
    for algorithm in ("tiny_a", "tiny_b"):
        finals, bests = [], []
        for seed in (0, 1):
            run = out / algorithm / "pendulum-mixed" / f"seed_{seed}"
            evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
            assert [e["step"] for e in evals] == [30, 60]
            finals.append(evals[-1]["normalized_score"])
            bests.append(max(e["normalized_score"] for e in evals))
            result = json.loads((run / "result.json").read_text())
            assert result["final_score"] == finals[-1]
        row = table.runs[table.runs["algorithm"] == algorithm]
        assert row["final_score"].tolist() == finals and row["best_score"].tolist() == bests
        final_cell = f"{np.mean(finals):.1f} ± {np.std(finals, ddof=1):.1f} (2)"
        best_cell = f"{np.mean(bests):.1f} ± {np.std(bests, ddof=1):.1f} (2)"
        assert final_cell in report.markdown and best_cell in report.markdown
    assert "Interquartile mean (IQM)" in report.markdown
    assert "\\begin{tabular}" in report.latex
    assert f"dataset: {pendulum_store} (content hash " in report.markdown
    assert (tmp_path / "tables" / "curves_pendulum-mixed.png").stat().st_size > 1000
    assert "seed_1.failed-1" not in table.evaluations["run_dir"].str.cat()


@pytest.mark.slow
def test_killed_worker_run_resumes_from_its_checkpoint(
    tiny_registry, pendulum_store, counter, tmp_path
):
    out = tmp_path / "out"
    file = write_long_sweep(tmp_path, pendulum_store, "tiny_a")
    sweep = load_sweep(file)
    run_dir = out / "tiny_a" / "pendulum-mixed" / "seed_0"
    reports = []
    thread = threading.Thread(
        target=lambda: reports.append(run_sweep(sweep, out, workers=1, echo=lambda *a: None))
    )
    thread.start()
    deadline = time.monotonic() + 60
    while not (run_dir / "checkpoints" / "last.pt").exists():
        assert time.monotonic() < deadline and thread.is_alive(), "no checkpoint appeared"
        time.sleep(0.02)
    worker = int((run_dir / ".sweep.lock").read_text())
    assert worker != os.getpid()
    os.kill(worker, signal.SIGKILL)
    thread.join(60)
    (report,) = reports
    outcome = report.runs["tiny_a/pendulum-mixed/seed_0"]
    assert outcome["status"] == "interrupted" and "SIGKILL" in outcome["error"]
    assert not (run_dir / "result.json").exists()
    killed_at = max(json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").open())
    assert 0 < killed_at < LONG_STEPS

    report = run_sweep(sweep, out, workers=1, echo=lambda *a: None)
    assert report.runs["tiny_a/pendulum-mixed/seed_0"]["status"] == "complete"
    assert trained(counter) == ["tiny_a/seed_0", "tiny_a/seed_0"]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").open()]
    assert steps == list(range(50, LONG_STEPS + 1, 50))  # continued, no step logged twice
    assert len(list((run_dir / "tb").glob("events.*"))) == 2  # a second writer: it resumed


def import_ray():
    """ray, or a skip where it is not installed; in CI (CI=true) a failure: CI installs the ray
    extra (make test-all), so a skipped Ray test there means the backend went untested."""
    try:
        import ray
    except ImportError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI runs the Ray tests, but ray does not import ({exc}): make test-all")
        pytest.skip("ray is an optional extra: pip install 'ray[default]'")
    return ray


@pytest.mark.slow
def test_ray_backend_in_local_mode(tiny_registry, pendulum_store, counter, tmp_path, monkeypatch):
    ray = import_ray()
    # Ray's workers start from the raylet's environment: give them the tiny module's folder.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([TESTS_DIR, *sys.path]))
    file = write_sweep(tmp_path / "ray.toml", pendulum_store, "", algorithms=["tiny_a"])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report = run_sweep(load_sweep(file), tmp_path / "out", backend="ray", echo=lambda *a: None)
    finally:
        ray.shutdown()
    assert report.all_complete and len(report.runs) == 2
    assert sorted(trained(counter)) == ["tiny_a/seed_0", "tiny_a/seed_1"]
    for seed in (0, 1):
        run = tmp_path / "out" / "tiny_a" / "pendulum-mixed" / f"seed_{seed}"
        assert json.loads((run / "status.json").read_text())["status"] == "complete"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def ray_cluster(monkeypatch: pytest.MonkeyPatch, hidden: Path | None = None) -> Iterator[str]:
    """A Ray head node started by `ray start` as its own process, as a cluster runs; yields its
    address and stops it also when the test fails. Its workers start from the head's environment
    (this process's, plus tests/ on PYTHONPATH for the tiny algorithm), with one auth token for
    head and drivers (Ray >= 2.52 token auth). With `hidden`, the head runs in its own mount
    namespace where that directory is an empty tmpfs: a node that does not share the driver's
    file system there."""
    import_ray()
    import shutil
    import subprocess
    import tempfile
    # drivers run as their own processes: Ray reads the auth settings once, at import

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", os.urandom(16).hex())
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([TESTS_DIR, *sys.path]))
    ray_cli = str(Path(sys.executable).with_name("ray"))
    port = _free_port()
    ray_temp = tempfile.mkdtemp(prefix="ray")  # short: Ray's socket paths must fit 107 bytes
    start = [ray_cli, "start", "--head", f"--port={port}", "--num-cpus=2"]
    start += ["--include-dashboard=false", f"--temp-dir={ray_temp}"]
    if hidden is not None:
        hidden.mkdir(parents=True, exist_ok=True)
        mount = 'mount -t tmpfs tmpfs "$0" && exec "$@"'
        start = ["unshare", "--mount", "sh", "-c", mount, str(hidden), *start]
    started = subprocess.run(start, capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(ray_temp, ignore_errors=True)


@pytest.mark.slow
def test_sweep_on_a_running_ray_cluster_equals_the_local_backend(
    pendulum_store, tmp_path, monkeypatch
):
    """A sweep driver in its own process connects with --address; real BC runs in the raylet's
    worker processes. Same seeds on CPU: the same scores as the local backend, bit for bit."""
    import subprocess

    file = write_sweep(tmp_path / "bc.toml", pendulum_store, "", algorithms=["bc"], steps=200)
    with ray_cluster(monkeypatch) as address:
        command = [sys.executable, "-m", "dql.sweep", str(file), "--out", str(tmp_path / "ray")]
        command += ["--backend", "ray", "--address", address]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    local = run_sweep(load_sweep(file), tmp_path / "local", workers=2, echo=lambda *a: None)
    assert local.all_complete
    for seed in (0, 1):
        key = Path("bc") / "pendulum-mixed" / f"seed_{seed}" / "result.json"
        on_ray = json.loads((tmp_path / "ray" / key).read_text())
        here = json.loads((tmp_path / "local" / key).read_text())
        assert on_ray["steps"] == 200 and on_ray["final_score"] == here["final_score"]
    status = json.loads((tmp_path / "ray" / "sweep_status.json").read_text())
    assert all(run["status"] == "complete" for run in status["runs"].values())


@pytest.mark.slow
def test_a_ray_worker_killed_mid_run_resumes_from_its_checkpoint(
    pendulum_store, tmp_path, monkeypatch
):
    """SIGKILL of the worker process that trains a run: Ray retries the task, the run continues
    from its last checkpoint (no step logged twice, a second TensorBoard writer) and the sweep
    driver (its own process) finishes with every run complete."""
    import subprocess

    out = tmp_path / "out"
    file = write_long_sweep(tmp_path, pendulum_store, "bc")
    run_dir = out / "bc" / "pendulum-mixed" / "seed_0"
    with ray_cluster(monkeypatch) as address:
        command = [sys.executable, "-m", "dql.sweep", str(file), "--out", str(out)]
        driver = subprocess.Popen(
            [*command, "--backend", "ray", "--address", address],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 120
            while not (run_dir / "checkpoints" / "last.pt").exists():
                assert time.monotonic() < deadline and driver.poll() is None, "no checkpoint"
                time.sleep(0.05)
            worker = int((run_dir / ".sweep.lock").read_text())
            os.kill(worker, signal.SIGKILL)
            killed_at = max(json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").open())
            output, _ = driver.communicate(timeout=300)
        finally:
            driver.kill()
    assert driver.returncode == 0, output[-3000:]
    assert 0 < killed_at < LONG_STEPS
    assert json.loads((run_dir / "result.json").read_text())["steps"] == LONG_STEPS
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").open()]
    assert steps == list(range(50, LONG_STEPS + 1, 50))  # continued, no step logged twice
    assert len(list((run_dir / "tb").glob("events.*"))) == 2  # a second writer: it resumed
    status = json.loads((out / "sweep_status.json").read_text())
    assert status["runs"]["bc/pendulum-mixed/seed_0"]["status"] == "complete"


def test_an_unreachable_ray_head_is_one_error_naming_the_address(tmp_path, capsys):
    """Nothing listens there: one line at once (ray.init alone retries for minutes)."""
    file = write_sweep(tmp_path / "s.toml", "x/p/q-v0", "", algorithms=["bc"])
    address = f"127.0.0.1:{_free_port()}"
    started = time.monotonic()
    assert (
        dql_main(
            [
                "sweep",
                str(file),
                "--out",
                str(tmp_path / "out"),
                "--backend",
                "ray",
                "--address",
                address,
            ]
        )
        == 2
    )
    assert time.monotonic() - started < 30
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"cannot reach the Ray head at {address}" in err
    assert not (tmp_path / "out").exists()  # nothing written for a sweep that cannot start
    assert dql_main(["sweep", str(file), "--backend", "ray", "--address", "headnode"]) == 2
    assert "--address must be HOST:PORT" in capsys.readouterr().err


def _can_unshare_mounts() -> bool:
    import shutil
    import subprocess

    if not shutil.which("unshare"):
        return False
    tried = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
    return tried.returncode == 0


@pytest.mark.slow
def test_ray_refuses_an_output_directory_its_workers_cannot_see(
    pendulum_store, tmp_path, monkeypatch
):
    """The head's node sees an empty file system where the driver writes: the sweep is refused in
    one error line naming the directory and the node, and nothing is trained."""
    import subprocess

    if not _can_unshare_mounts():
        pytest.skip("needs `unshare --mount` (root or user namespaces) to hide a directory")
    hidden = tmp_path / "not_shared"
    out = hidden / "out"
    file = write_sweep(tmp_path / "bc.toml", pendulum_store, "", algorithms=["bc"], steps=50)
    with ray_cluster(monkeypatch, hidden=hidden) as address:
        command = [sys.executable, "-m", "dql.sweep", str(file), "--out", str(out)]
        done = subprocess.run(
            [*command, "--backend", "ray", "--address", address],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1, done.stderr[-2000:]
    assert f"cannot use the output directory {out}" in error[0]
    assert "does not see the driver's files" in error[0]
    assert not list(out.rglob("metrics.jsonl")) and not list(out.glob(".ray_probe_*"))


@pytest.mark.slow
def test_a_ray_driver_interrupted_and_restarted_finishes_the_sweep(
    pendulum_store, tmp_path, monkeypatch
):
    """SIGTERM to the sweep driver mid-run: the running task checkpoints, sweep_status.json says
    the run was interrupted, the driver exits 130. A second driver resumes it from that
    checkpoint (no step logged twice) and finishes; the run counts two attempts, one complete."""
    import subprocess

    out = tmp_path / "out"
    file = write_long_sweep(tmp_path, pendulum_store, "bc")
    run_dir = out / "bc" / "pendulum-mixed" / "seed_0"
    key = "bc/pendulum-mixed/seed_0"
    with ray_cluster(monkeypatch) as address:
        command = [sys.executable, "-m", "dql.sweep", str(file), "--out", str(out)]
        command += ["--backend", "ray", "--address", address]
        driver = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            deadline = time.monotonic() + 120
            while not (run_dir / "checkpoints" / "last.pt").exists():
                assert time.monotonic() < deadline and driver.poll() is None, "no checkpoint"
                time.sleep(0.05)
            driver.send_signal(signal.SIGTERM)
            output, _ = driver.communicate(timeout=180)
        finally:
            driver.kill()
        assert driver.returncode == 130, output[-3000:]
        status = json.loads((out / "sweep_status.json").read_text())["runs"][key]
        assert status["status"] == "interrupted" and status["attempts"] == 1
        stopped_at = json.loads((run_dir / "status.json").read_text())["step"]
        assert 0 < stopped_at < LONG_STEPS
        again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "1 resumed from their checkpoints" in again.stdout
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").open()]
    assert steps == list(range(50, LONG_STEPS + 1, 50))  # continued, no step logged twice
    assert len(list((run_dir / "tb").glob("events.*"))) == 2  # a second writer: it resumed
    status = json.loads((out / "sweep_status.json").read_text())
    assert status["counts"] == {"complete": 1}
    assert status["runs"][key]["status"] == "complete" and status["runs"][key]["attempts"] == 2


@pytest.mark.slow
def test_real_bc_and_td3bc_through_the_sweep(pendulum_store, tmp_path):
    pytest.importorskip("baselines.td3bc")
    pytest.importorskip("baselines.bc")
    file = tmp_path / "real.toml"
    file.write_text(
        'algorithms = ["bc", "td3bc"]\n'
        f'datasets = ["{pendulum_store}"]\n'
        "seeds = [0]\nsteps = 100\neval_interval = 100\neval_episodes = 2\nlog_interval = 50\n"
        "checkpoint_interval = 100\nkeep_eval_checkpoints = false\n"
    )
    report = run_sweep(load_sweep(file), tmp_path / "out", workers=2, echo=lambda *a: None)
    assert report.all_complete, report.runs
    from dql.tables import make_tables

    md, table, _ = make_tables(tmp_path / "out", reps=100, plots=False)
    assert sorted(table.runs["algorithm"]) == ["bc", "td3bc"]


def test_plan_refuses_an_invalid_run_config(tiny_registry, tmp_path):
    file = write_sweep(tmp_path / "s.toml", "x/p/q-v0", "[overrides.tiny_b]\neval_episodes = 0\n")
    with pytest.raises(ConfigError, match="tiny_b on x/p/q-v0 seed 0: --eval-episodes"):
        plan_runs(load_sweep(file), tmp_path / "out")


@pytest.mark.parametrize("name", ["demo", "gym_full"])
def test_shipped_sweep_files_plan_valid_runs(name, tmp_path):
    file = Path(__file__).resolve().parent.parent / "experiments" / "sweeps" / f"{name}.toml"
    for module in ("dql.diffusion_ql", "baselines.td3bc", "baselines.iql"):
        pytest.importorskip(module)
    if name == "gym_full":
        for module in ("baselines.cql", "baselines.bcq", "baselines.bc"):
            pytest.importorskip(module)
    sweep = load_sweep(file)
    runs = plan_runs(sweep, tmp_path)
    assert len(runs) == len(sweep.algorithms) * len(sweep.datasets) * len(sweep.seeds)
    steps = {r.algorithm: r.config["steps"] for r in runs}
    if name == "demo":
        assert sweep.algorithms[0] == "diffusion_ql" and sweep.seeds == [0, 1, 2]  # slowest first
        assert sweep.datasets == ["local/pendulum/flip-v0"]
        assert steps["diffusion_ql"] < steps["td3bc"]  # about equal wall-clock budgets
    else:
        assert steps["diffusion_ql"] == 2_000_000 and steps["td3bc"] == 1_000_000


def test_a_run_locked_by_another_process_is_left_alone(tiny_registry, counter, tmp_path):
    from dql.sweep import _run_lock, run_state

    file = write_sweep(tmp_path / "s.toml", "x/p/q-v0", "", algorithms=["tiny_a"], seeds=[0])
    run_dir = tmp_path / "out" / "tiny_a" / "p-q" / "seed_0"
    with _run_lock(run_dir) as acquired:  # as a live worker of another sweep would hold it
        assert acquired and run_state(run_dir) == "busy"
        report = run_sweep(load_sweep(file), tmp_path / "out", echo=lambda *a: None)
    assert report.runs["tiny_a/p-q/seed_0"]["status"] == "busy" and report.launched == 0
    assert not counter.exists()
    assert run_state(run_dir) == "missing"  # lock released, nothing trained


def test_a_sweep_that_ends_last_does_not_mark_another_sweeps_finished_run_busy(
    tiny_registry, pendulum_store, counter, tmp_path
):
    from dql.sweep import _run_lock, _write_status

    file = write_sweep(tmp_path / "s.toml", pendulum_store, "", algorithms=["tiny_a"])
    out, sweep = tmp_path / "out", load_sweep(file)
    other = "tiny_a/pendulum-mixed/seed_0"
    with _run_lock(out / "tiny_a" / "pendulum-mixed" / "seed_0"):  # the other sweep trains it
        mine = run_sweep(sweep, out, echo=lambda *a: None, only=["tiny_a/*/seed_1"])
    assert mine.runs[other]["status"] == "busy"
    run_sweep(sweep, out, echo=lambda *a: None, only=[other])  # the other sweep finishes it
    # and this sweep writes its status last, as when its run ends after the other's
    _write_status(out, sweep, mine, frozenset({"tiny_a/pendulum-mixed/seed_1"}))
    runs = json.loads((out / "sweep_status.json").read_text())["runs"]
    assert {k: r["status"] for k, r in runs.items()} == {
        other: "complete",
        "tiny_a/pendulum-mixed/seed_1": "complete",
    }
    assert runs[other]["final_score"] is not None and runs[other]["attempts"] == 1


def test_only_launches_the_matching_runs_and_launch_for_starts_none_after_its_time(
    tiny_registry, pendulum_store, counter, tmp_path, capsys
):
    file = write_sweep(tmp_path / "s.toml", pendulum_store, "")
    out = tmp_path / "out"
    assert dql_main(["sweep", str(file), "--out", str(out), "--only", "tiny_b/*/seed_1"]) == 1
    assert trained(counter) == ["tiny_b/seed_1"]
    counts = json.loads((out / "sweep_status.json").read_text())["counts"]
    assert counts == {"complete": 1, "pending": 3}

    assert dql_main(["sweep", str(file), "--out", str(out), "--only", "tiny_c/*"]) == 2
    assert "--only tiny_c/* matches no run" in capsys.readouterr().err

    # time already up: nothing more starts, the three runs stay pending for the next sweep
    assert (
        dql_main(["sweep", str(file), "--out", str(out), "--workers", "1", "--launch-for", "1e-9"])
        == 1
    )
    assert trained(counter) == ["tiny_b/seed_1"]
    runs = json.loads((out / "sweep_status.json").read_text())["runs"]
    assert runs["tiny_a/pendulum-mixed/seed_0"]["status"] == "not started"
    assert "attempts" not in runs["tiny_a/pendulum-mixed/seed_0"] or (
        runs["tiny_a/pendulum-mixed/seed_0"]["attempts"] == 0
    )
    assert dql_main(["sweep", str(file), "--out", str(out), "--launch-for", "30"]) == 0
    assert sorted(trained(counter)) == sorted(
        ["tiny_a/seed_0", "tiny_a/seed_1", "tiny_b/seed_0", "tiny_b/seed_1"]
    )


def test_a_sweep_refuses_to_add_runs_on_another_build_of_its_data(
    tiny_registry, pendulum_store, counter, tmp_path, capsys
):
    file = write_sweep(tmp_path / "s.toml", pendulum_store, "", algorithms=["tiny_a"])
    out = tmp_path / "out"
    assert dql_main(["sweep", str(file), "--out", str(out), "--only", "*/seed_0"]) == 1
    # as if seed 0 had finished on a machine whose build of the dataset came out different
    config = out / "tiny_a" / "pendulum-mixed" / "seed_0" / "config.json"
    saved = json.loads(config.read_text())
    local_hash = saved["dataset"]["content_hash"]
    saved["dataset"]["content_hash"] = "0" * 32
    config.write_text(json.dumps(saved))

    assert dql_main(["sweep", str(file), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"content hash {local_hash}" in err and "trained on " + "0" * 32 in err
    assert trained(counter) == ["tiny_a/seed_0"]  # seed 1 not started
    assert dql_main(["sweep", str(file), "--out", str(out), "--allow-other-build"]) == 0
    assert trained(counter) == ["tiny_a/seed_0", "tiny_a/seed_1"]
