"""Cross-check of the baselines against d3rlpy 2.8.1's implementations of the same algorithms.

    python experiments/crosscheck_d3rlpy.py [--dataset ID] [--steps N] [--algorithms A ...]
        [--eval-episodes N] [--speed-seconds S] [--speed-only] [--seed S] [--out DIR] [--name STEM]

For each of TD3+BC, IQL, CQL, BCQ and BC, on one dataset and one step budget: the normalized
score of ours (`baselines/<name>.py` through `dql.training.run_training`) beside d3rlpy's
(TD3PlusBC, IQL, CQL, BCQ, BC), both evaluated by `dql.evaluation.evaluate` on the same seeded
episodes, and gradient steps per second of each at batch 256, hidden 256, 1 thread.

Both sides get the same settings: the paper defaults of our tables (experiments/hyperparams) for
the dataset's task, hidden 256-256 everywhere (BCQ's VAE 750-750; CQL's actor at our table's
widths), observations standardised where our table standardises them (not for BCQ, whose
authors feed raw states), IQL's reward scaling where our table asks for it, a cosine-decayed IQL
actor lr. Where d3rlpy differs by design it is said in the table's notes: its CQL keeps a
Lagrangian weight unless `alpha_learning_rate=0` (set here unless our table turns --lagrange on,
as on AntMaze) and subtracts a threshold (no effect on gradients); its BCQ uses one
`n_action_samples` for the target and for acting (10 in training, switched to 100 before
evaluation, as ours).

Speed: the two implementations train in alternating chunks of about a second (ours, d3rlpy,
ours, ...) for --speed-seconds each, on Hopper-sized synthetic data with --speed-only
(observations 11, actions 3) or on the dataset otherwise; the ratio is the median of the
per-round ratios, so load that comes and goes on a shared machine hits both.

Without --dataset: local/hopper/medium-v0 when it is in the Minari store, else a small mixed
InvertedPendulum-v5 dataset built into .cache/crosscheck/minari (the recipe of
tests/test_baselines.py). The markdown table is printed and written to
OUT/STEM.md with the raw numbers in OUT/STEM.json (STEM: --name, default crosscheck or speed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from d3rlpy_adapter import (  # noqa: E402
    D3RLPY_NAMES,
    d3rlpy_algorithm,
    d3rlpy_available,
    d3rlpy_dataset,
)

from dql.buffer import ReplayBuffer  # noqa: E402
from dql.data import (  # noqa: E402
    ObservationNormalizer,
    Transitions,
    load_dataset,
    resolve_ref_scores,
    transform_rewards,
)
from dql.errors import UserError  # noqa: E402
from dql.evaluation import evaluate  # noqa: E402
from dql.hyperparams import task_hyperparams  # noqa: E402
from dql.registry import agent_class, load_algorithm  # noqa: E402
from dql.report import markdown_table  # noqa: E402

ALGORITHMS = ("td3bc", "iql", "cql", "bcq", "bc")
HIDDEN = (256, 256)
BATCH_SIZE = 256
HOPPER = "local/hopper/medium-v0"
FALLBACK = "local/pendulum/stretches-v0"


# --------------------------------------------------------------------------- dataset


def build_fallback_dataset(root: Path) -> str:
    """Mixed-quality InvertedPendulum-v5 (dql data build pendulum-stretches: time limit 100,
    10k steps): a good linear controller K s interrupted, with probability 0.4 per step, by 1-4
    steps of -0.5 K s."""
    from dql.builders.pendulum import build_pendulum

    os.environ["MINARI_DATASETS_PATH"] = str(root)
    if not (root / FALLBACK / "data").is_dir():
        build_pendulum("stretches", dataset_id_override=FALLBACK, progress=False)
    return FALLBACK


def resolve_dataset(requested: str | None) -> str:
    if requested:
        return requested
    from minari.storage.datasets_root_dir import get_dataset_path

    if (Path(get_dataset_path(HOPPER)) / "data").is_dir():
        return HOPPER
    return build_fallback_dataset(ROOT / ".cache" / "crosscheck" / "minari")


def synthetic_transitions(
    observation_dim: int, action_dim: int, size: int = 100_000
) -> Transitions:
    """Random transitions of the given sizes (speed only), episodes of 1000 steps."""
    from dql.data import DatasetInfo

    rng = np.random.default_rng(0)
    observations = rng.standard_normal((size, observation_dim)).astype(np.float32)
    low = -np.ones(action_dim, np.float32)
    info = DatasetInfo("synthetic", "synthetic", observation_dim, action_dim, low, -low, "none")
    timeouts = np.zeros(size, np.float32)
    timeouts[999::1000] = 1.0
    return Transitions(
        observations=observations,
        actions=rng.uniform(-1, 1, (size, action_dim)).astype(np.float32),
        rewards=rng.standard_normal(size).astype(np.float32),
        next_observations=np.roll(observations, -1, axis=0),
        terminals=np.zeros(size, np.float32),
        timeouts=timeouts,
        episode_ids=np.arange(size) // 1000,
        info=info,
    )


# --------------------------------------------------------------------------- configurations


def our_config(name: str, dataset: str, steps: int, seed: int, **extra: Any) -> Any:
    """Our Config: the task's table values, hidden 256 (BCQ: VAE 750), batch 256."""
    module = load_algorithm(name)
    values = task_hyperparams(name, dataset, module.Config)
    values.update(dataset=dataset, steps=steps, seed=seed, batch_size=BATCH_SIZE, hidden=HIDDEN)
    values.update(extra)
    return module.Config(**values)


# --------------------------------------------------------------------------- scores


def our_score(name: str, config: Any, run_dir: Path) -> float:
    module = load_algorithm(name)
    return float(module.train(config)["final_score"])


def d3rlpy_score(name: str, config: Any, transitions: Transitions, eval_episodes: int) -> float:
    import d3rlpy

    d3rlpy.seed(config.seed)
    algo = d3rlpy_algorithm(name, config, config.steps, transitions.info.action_high)
    algo.fit(
        d3rlpy_dataset(transitions),
        n_steps=config.steps,
        n_steps_per_epoch=config.steps,
        logger_adapter=d3rlpy.logging.NoopAdapterFactory(),
        show_progress=False,
        save_interval=config.steps + 1,
    )
    if name == "bcq":  # 10 samples in the target while training, 100 to act (as ours)
        algo.impl._n_action_samples = config.eval_sampled_actions
    info = transitions.info
    result = evaluate(
        lambda observations: algo.predict(observations.astype(np.float32)),
        info,
        num_episodes=eval_episodes,
        seed=config.eval_seed,
        ref_scores=resolve_ref_scores(info),
        progress=False,
    )
    return float(result.normalized_score)


# --------------------------------------------------------------------------- speed


def our_stepper(name: str, config: Any, transitions: Transitions):
    module = load_algorithm(name)
    normalizer = ObservationNormalizer.from_data(transitions.observations)
    rewards = transform_rewards(transitions, config.reward_transform)
    buffer = ReplayBuffer(transitions, seed=0, normalizer=normalizer, rewards=rewards)
    info = transitions.info
    agent = agent_class(module)(
        info.observation_dim, info.action_dim, float(info.action_high[0]), config
    )

    def run(n: int) -> None:  # as run_training: metrics accumulated, one sync per chunk
        accum: dict[str, torch.Tensor] = {}
        for _ in range(n):
            for k, v in agent.update(buffer.sample(config.batch_size)).items():
                accum[k] = accum[k] + v.detach() if k in accum else v.detach()
        torch.stack(list(accum.values())).tolist()

    return run


def d3rlpy_stepper(name: str, config: Any, transitions: Transitions):
    from d3rlpy.algos.utility import build_scalers_with_transition_picker

    algo = d3rlpy_algorithm(name, config, 10**6, transitions.info.action_high)
    dataset = d3rlpy_dataset(transitions)
    build_scalers_with_transition_picker(algo, dataset)  # as d3rlpy's fit does, in this order
    algo.build_with_dataset(dataset)

    def run(n: int) -> None:
        for _ in range(n):
            algo.update(dataset.sample_transition_batch(config.batch_size))

    return run


def chunk_size(run, target_seconds: float = 1.0) -> tuple[int, float]:
    """Steps per chunk for about `target_seconds` (after a warm-up) and the warm-up's rate."""
    run(3)
    started = time.perf_counter()
    run(5)
    rate = 5 / (time.perf_counter() - started)
    return max(1, int(rate * target_seconds)), rate


def alternate(ours, theirs, seconds: float) -> dict[str, float]:
    """Steps/s of both, in alternating chunks; ratio = median of per-round ratios."""
    ours_n, _ = chunk_size(ours)
    theirs_n, _ = chunk_size(theirs)
    rounds = max(2, int(seconds))
    ours_rates, theirs_rates = [], []
    for _ in range(rounds):
        for run, n, rates in ((ours, ours_n, ours_rates), (theirs, theirs_n, theirs_rates)):
            started = time.perf_counter()
            run(n)
            rates.append(n / (time.perf_counter() - started))
    ratios = [a / b for a, b in zip(ours_rates, theirs_rates)]
    return {
        "ours_steps_per_s": float(np.median(ours_rates)),
        "d3rlpy_steps_per_s": float(np.median(theirs_rates)),
        "ratio": float(np.median(ratios)),
    }


# --------------------------------------------------------------------------- table


def markdown(rows: list[dict[str, Any]], header: dict[str, Any]) -> str:
    def fmt(value: Any, digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    lines = [
        f"Dataset `{header['dataset']}`, {header['steps']} gradient steps, seed {header['seed']}, "
        f"{header['eval_episodes']} evaluation episodes; speed on {header['speed_data']}, "
        f"batch {BATCH_SIZE}, hidden {HIDDEN[0]}, 1 thread; {header['machine']}.",
        "",
    ]
    table = [
        {
            "algorithm": row["algorithm"],
            "ours score": fmt(row.get("ours_score")),
            "d3rlpy score": fmt(row.get("d3rlpy_score")),
            "ours steps/s": fmt(row.get("ours_steps_per_s")),
            "d3rlpy steps/s": fmt(row.get("d3rlpy_steps_per_s")),
            "ratio": fmt(row.get("ratio"), 2),
        }
        for row in rows
    ]
    lines.append(markdown_table(pd.DataFrame(table)))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", help=f"Minari id (default: {HOPPER} or a built fallback)")
    parser.add_argument("--steps", type=int, default=2000, help="gradient steps per run")
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speed-seconds", type=float, default=6.0, help="per implementation")
    parser.add_argument(
        "--speed-only",
        action="store_true",
        help="only the speed columns, on Hopper-sized synthetic data (observations 11, actions 3)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "crosscheck")
    parser.add_argument(
        "--name", help="file name stem of the outputs (default: crosscheck, or speed)"
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.eval_episodes < 1 or args.speed_seconds <= 0:
        parser.error("--steps, --eval-episodes and --speed-seconds must be positive")
    problem = d3rlpy_available()
    if problem is None:
        try:
            return crosscheck(args)
        except UserError as exc:  # a dataset not in the store, a bad config: one line
            problem = str(exc)
    print(f"error: {problem}", file=sys.stderr)
    return 2


def crosscheck(args: argparse.Namespace) -> int:
    """Train ours and d3rlpy's on the same data and seed, time both; write OUT/STEM.md/.json."""
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)

    if args.speed_only:
        dataset, transitions = "synthetic", synthetic_transitions(11, 3)
        speed_data = "synthetic Hopper-sized data (obs 11, act 3)"
    else:
        dataset = resolve_dataset(args.dataset)
        transitions = load_dataset(dataset)
        speed_data = "the dataset"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {load} at the start, torch {torch.__version__}"
    )
    header = dict(
        dataset=dataset,
        steps=0 if args.speed_only else args.steps,
        seed=args.seed,
        eval_episodes=args.eval_episodes,
        speed_data=speed_data,
        machine=machine,
    )
    rows = []
    for name in args.algorithms:
        row: dict[str, Any] = {"algorithm": D3RLPY_NAMES[name] if name != "td3bc" else "TD3+BC"}
        task = "local/hopper/medium-v0" if args.speed_only else dataset
        config = our_config(name, task, args.steps, args.seed, device="cpu", progress=False)
        if not args.speed_only:
            with tempfile.TemporaryDirectory() as tmp:
                run_config = dataclasses.replace(
                    config,
                    run_dir=str(Path(tmp) / "run"),
                    eval_interval=args.steps,
                    eval_episodes=args.eval_episodes,
                    checkpoint_interval=args.steps,
                    log_interval=min(args.steps, 1000),
                    keep_eval_checkpoints=False,
                )
                started = time.perf_counter()
                row["ours_score"] = our_score(name, run_config, Path(tmp))
                row["ours_wall_s"] = time.perf_counter() - started
            started = time.perf_counter()
            row["d3rlpy_score"] = d3rlpy_score(name, config, transitions, args.eval_episodes)
            row["d3rlpy_wall_s"] = time.perf_counter() - started
        row.update(
            alternate(
                our_stepper(name, config, transitions),
                d3rlpy_stepper(name, config, transitions),
                args.speed_seconds,
            )
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
    table = markdown(rows, header)
    print(table)
    stem = args.name or ("speed" if args.speed_only else "crosscheck")
    (args.out / f"{stem}.md").write_text(table)
    (args.out / f"{stem}.json").write_text(json.dumps({"header": header, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
