"""`make demo`: build hopper-medium locally, train Diffusion-QL, TD3+BC and IQL on it over 3 seeds
with short budgets through the sweep runner, and print the results table.

    python -m dql.demo [--workers N] [--size N] [--out DIR] [--sweep FILE]

Everything goes under runs/demo/, which git ignores (a demo never rewrites tracked files; the
snapshot in results/demo/ is made on purpose, `python -m dql.demo --out results/demo`): the
dataset store (datasets/, so a small demo dataset never stands in for a full-size one in your
own Minari store), the runs (runs/), the tables
(results.md, results.tex, CSVs) and the learning curves (curves_*.png). Running it again reuses
the dataset and every finished run; an interrupted demo continues where it stopped. The sweep
is experiments/sweeps/demo.toml; the paper-length one is experiments/sweeps/gym_full.toml.

When this checkout cannot build hopper-medium (no dql.builders, or no shipped behaviour
policy, whose training would take hours), the demo says so and uses a small InvertedPendulum
dataset it builds itself from a noisy linear controller, so that the pipeline still runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEMO_DIR = REPO / "runs" / "demo"
SWEEP_FILE = REPO / "experiments" / "sweeps" / "demo.toml"
DATASET_ID = "local/hopper/medium-v0"
DATASET_SIZE = 100_000
FALLBACK_ID = "local/invertedpendulum/noisy-controller-v0"


def say(message: str = "") -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------- dataset


def dataset_ready(dataset_id: str) -> bool:
    from dql.data import load_dataset
    from dql.errors import UserError

    try:
        load_dataset(dataset_id)
    except UserError:
        return False
    return True


def can_build_hopper() -> str | None:
    """None when hopper-medium can be built in minutes, else why not."""
    try:
        from dql.builders.locomotion import find_policy
    except ImportError as exc:
        return f"the dataset builders are missing from this checkout ({exc})"
    missing = [
        level for level in ("medium", "expert") if find_policy("hopper", level, None) is None
    ]
    if missing:
        return (
            f"no shipped hopper {' and '.join(missing)} behaviour policy (dql/policies/) was "
            "found, and training one takes hours"
        )
    return None


def build_hopper(size: int) -> None:
    command = [sys.executable, "-m", "dql.builders.cli", "build", "hopper-medium"]
    command += ["--size", str(size)]
    if (Path(os.environ["MINARI_DATASETS_PATH"]) / DATASET_ID).exists():
        command.append("--overwrite")  # a half-built or unreadable one
    if not sys.stdout.isatty():
        command.append("--no-progress")  # progress bars flood logs
    say("$ python " + " ".join(command[1:]))
    subprocess.run(command, check=True)


def build_fallback(size: int = 50_000, seed: int = 0) -> None:
    """InvertedPendulum-v5 episodes from a balancing linear controller whose Gaussian action noise
    cycles over four levels per episode: mixed-quality data. ref_min: uniform random actions;
    ref_max: the 1000-step time limit (reward 1 per step)."""
    import gymnasium as gym
    import minari
    from minari.data_collector import EpisodeBuffer

    gains = np.array([1.0, 20.0, 2.0, 3.0])
    noise_levels = (0.5, 2.0, 4.0, 8.0)
    env = gym.make("InvertedPendulum-v5")
    rng = np.random.default_rng(seed)
    buffers, steps, episode = [], 0, 0
    while steps < size:
        obs, _ = env.reset(seed=seed + episode)
        sigma = noise_levels[episode % len(noise_levels)]
        observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
        done = False
        while not done:
            action = np.clip([gains @ obs + sigma * rng.normal()], -3.0, 3.0).astype(np.float32)
            obs, reward, terminated, truncated, _ = env.step(action)
            steps += 1
            truncated = truncated or steps >= size  # the size cut is a truncation, not a terminal
            observations.append(obs)
            actions.append(action)
            rewards.append(float(reward))
            terminations.append(bool(terminated))
            truncations.append(bool(truncated) and not terminated)
            done = terminated or truncated
        buffers.append(
            EpisodeBuffer(
                id=episode,
                seed=seed + episode,
                observations=np.stack(observations),
                actions=np.stack(actions),
                rewards=rewards,
                terminations=terminations,
                truncations=truncations,
                infos={},
            )
        )
        episode += 1
    random_returns = []
    for i in range(20):
        env.reset(seed=10_000 + i)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total += float(reward)
            done = terminated or truncated
        random_returns.append(total)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # minari: no author, permalink, eval_env
        minari.create_dataset_from_buffers(
            FALLBACK_ID,
            buffers,
            env=env.spec,
            algorithm_name="noisy linear controller (dql.demo fallback)",
            ref_min_score=float(np.mean(random_returns)),
            ref_max_score=1000.0,
            data_format="hdf5",
            description="dql demo fallback: InvertedPendulum-v5, linear controller + noise.",
        )
    env.close()


def check_dataset(dataset_id: str) -> None:
    """Load the dataset once and resolve its reference scores, so that a bad dataset is one
    error here rather than nine failed runs."""
    from dql.data import load_dataset, resolve_ref_scores
    from dql.errors import DatasetError

    try:
        low, high = resolve_ref_scores(load_dataset(dataset_id).info)
    except DatasetError as exc:
        store = os.environ["MINARI_DATASETS_PATH"]
        raise DatasetError(f"{exc} (delete {store}/{dataset_id} to rebuild it)") from None
    say(f"dataset {dataset_id}: reference returns random {low:.1f}, expert {high:.1f}")


def ensure_dataset(size: int) -> tuple[str, str | None]:
    """The demo's dataset id, built if needed, and a note when it is the fallback."""
    if dataset_ready(DATASET_ID):
        say(f"dataset {DATASET_ID}: already built, reused")
        return DATASET_ID, None
    reason = can_build_hopper()
    if reason is None:
        say(f"building {DATASET_ID} ({size:,} transitions from the shipped SAC policy)...")
        build_hopper(size)
        return DATASET_ID, None
    note = (
        f"FALLBACK: hopper-medium cannot be built here: {reason}. The demo uses a small "
        f"InvertedPendulum dataset ({FALLBACK_ID}) instead, so that the pipeline runs end to "
        "end; its scores say nothing about hopper."
    )
    say(note)
    if dataset_ready(FALLBACK_ID):
        say(f"dataset {FALLBACK_ID}: already built, reused")
    else:
        say(f"building {FALLBACK_ID}...")
        build_fallback()
    return FALLBACK_ID, note


# --------------------------------------------------------------------------- the demo


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dql.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=None, help="parallel runs (default: CPUs)")
    parser.add_argument("--size", type=int, default=DATASET_SIZE, help="hopper-medium transitions")
    parser.add_argument("--out", type=Path, default=DEMO_DIR, help="demo directory")
    parser.add_argument("--sweep", type=Path, default=SWEEP_FILE, help="sweep file to run")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))

    from dql.errors import UserError
    from dql.sweep import load_sweep, run_sweep
    from dql.tables import make_tables

    started = time.perf_counter()
    out: Path = args.out
    runs_dir = out / "runs"
    os.environ["MINARI_DATASETS_PATH"] = str(out / "datasets")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    say(
        "dql demo: Diffusion-QL vs TD3+BC and IQL on hopper-medium, 3 seeds, short budgets "
        f"(~12 minutes on 2 cores). Output: {out}"
    )
    try:
        dataset_id, fallback_note = ensure_dataset(args.size)
        check_dataset(dataset_id)
        say(f"[{_clock(started)}] dataset ready")
        sweep = load_sweep(args.sweep)
        sweep.datasets = [dataset_id]
        report = run_sweep(sweep, runs_dir, workers=args.workers)
        if report.interrupted_by_user:
            say("demo interrupted; run `make demo` again to continue where it stopped")
            return 130
        say(f"[{_clock(started)}] training done; tables...")
        table_report, _, written = make_tables(
            runs_dir, out, reference="diffusion_ql", datasets=[dataset_id]
        )
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"error: building the dataset failed ({exc})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        say("demo interrupted; run `make demo` again to continue where it stopped")
        return 130
    say()
    say(table_report.markdown)
    if fallback_note:
        say(fallback_note)
    say(f"wrote {', '.join(str(p.relative_to(out)) for p in written)} in {out}")
    say(f"demo finished in {_clock(started)}")
    say()
    say("The full-length version (paper budgets; days of CPU time, meant for a GPU cluster):")
    say("  for env in hopper halfcheetah walker2d; do for q in medium medium-replay medium-expert;")
    say("    do dql data build $env-$q; done; done     # 1M transitions each, default store")
    say("  dql sweep experiments/sweeps/gym_full.toml  # add --backend ray --address ... for Ray")
    say("  dql table runs/sweeps/gym_full")
    if not report.all_complete:
        print("some runs did not complete: see the table's provenance lines", file=sys.stderr)
        return 1
    return 0


def _clock(started: float) -> str:
    seconds = int(time.perf_counter() - started)
    return f"{seconds // 60}:{seconds % 60:02d}"


if __name__ == "__main__":
    sys.exit(main())
