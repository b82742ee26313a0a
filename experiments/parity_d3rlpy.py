"""Parity with d3rlpy: its implementation of an algorithm trained with the settings of our sweep
runs, on the same data and seeds, evaluated on the same seeded episodes at the same steps.

    python experiments/parity_d3rlpy.py train SWEEP.toml --only 'td3bc/hopper-medium-replay/seed_0' \
        [--out results/parity_d3rlpy]
    python experiments/parity_d3rlpy.py report --ours results/evidence_hopper/sweep \
        [--out results/parity_d3rlpy]

`train` takes each matching run of the sweep file (the config our sweep trains, built by
`dql.sweep.plan_runs`: defaults, the task's hyperparameter table, the sweep's fields) and trains
d3rlpy 2.8.1's TD3PlusBC/IQL/CQL/BCQ/BC set to those numbers (`crosscheck_d3rlpy.d3rlpy_algorithm`,
whose notes say where d3rlpy differs by design) for the same steps, evaluating every
`eval_interval` steps with `dql.evaluation.evaluate` (the sweep's eval seed and episodes). Each
d3rlpy run is a normal run directory, OUT/ALGORITHM_d3rlpy/TASK/seed_N (config.json, eval.jsonl,
result.json, status.json), so `dql table OUT` reads it. After every evaluation the d3rlpy model
is saved (OUT/.../checkpoints/d3rlpy_STEP.pt, git-ignored), and a rerun continues from the last
evaluation whose model is there (otherwise it starts over): the
weights and optimiser states come back, d3rlpy's sampling RNG does not (so a resumed d3rlpy run
is not bit-identical to an uninterrupted one; it is the same training in distribution).

`report` overlays, per (algorithm, task) present in OUT, the learning curves of ours (from
--ours) and d3rlpy's (mean and standard deviation over seeds) in OUT/curves_ALGO_TASK.png and
writes OUT/parity.md: final scores per seed and Welch's t-test of equal means at the last step.

d3rlpy is installed as environment-notes.md says (`pip install --no-deps d3rlpy==2.8.1`, then
its dependencies and gym 0.26.2: `pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "experiments"):
    if str(path) not in sys.path:  # run as a script from anywhere
        sys.path.insert(0, str(path))

from d3rlpy_adapter import d3rlpy_algorithm, d3rlpy_dataset  # noqa: E402

from dql.data import load_dataset, resolve_ref_scores, task_name  # noqa: E402
from dql.errors import UserError  # noqa: E402
from dql.evaluation import evaluate  # noqa: E402
from dql.report import markdown_table  # noqa: E402
from dql.runs import RunDirectory, atomic_write_json, git_commit, read_json  # noqa: E402
from dql.sweep import load_sweep, plan_runs, select_runs  # noqa: E402
from dql.training import _check_resume_config, fields_with_role, summarize  # noqa: E402

SUFFIX = "_d3rlpy"


def reference_run(spec: Any, out: Path, suffix: str) -> tuple[Any, RunDirectory]:
    """The sweep run's config and the reference's run directory, OUT/ALGORITHM{suffix}/TASK/
    seed_N, which the saved config names; a rerun must have the config it started with."""
    config = importlib.import_module(spec.module).Config(**spec.config)
    path = out / f"{spec.algorithm}{suffix}" / task_name(config.dataset) / f"seed_{config.seed}"
    config = dataclasses.replace(config, run_dir=str(path))
    saved = path / "config.json"
    if saved.exists():  # a rerun continues only the run it started, as a training run does
        resumable = fields_with_role(type(config), "resumable")
        _check_resume_config(read_json(saved)["config"], dataclasses.asdict(config), resumable)
    return config, RunDirectory(path)


def save_config(
    run: RunDirectory, name: str, config: Any, reference: str, info: Any, ref_scores: Any
) -> None:
    """config.json of a reference run, as a training run writes it, naming the reference."""
    atomic_write_json(
        run.path / "config.json",
        {
            "algorithm": name,
            "config": dataclasses.asdict(config),
            "seed": config.seed,
            "reference": reference,
            "git_commit": git_commit(),
            "dataset": info.to_dict(),
            "ref_scores": list(ref_scores),
        },
    )


def train_one(spec: Any, out: Path) -> dict[str, Any]:
    """d3rlpy's version of one sweep run; resumable at its evaluations."""
    import d3rlpy
    import torch

    name = spec.algorithm
    config, run = reference_run(spec, out, SUFFIX)
    if run.is_complete():
        return run.result()
    torch.set_num_threads(max(config.num_threads, 1))
    data = load_dataset(config.dataset)
    info = data.info
    ref_scores = resolve_ref_scores(info, config.ref_min_score, config.ref_max_score)
    d3rlpy.seed(config.seed)
    algo = d3rlpy_algorithm(name, config, config.steps, info.action_high)
    dataset = d3rlpy_dataset(data)
    models = run.path / "checkpoints"
    evals = run.rows("eval") if (run.path / "eval.jsonl").exists() else []
    done = evals[-1]["step"] if evals else 0
    if done and (models / f"d3rlpy_{done}.pt").exists():  # the model of the last evaluation
        algo.build_with_dataset(dataset)
        algo.load_model(str(models / f"d3rlpy_{done}.pt"))
    else:
        done, evals = 0, []
        (run.path / "eval.jsonl").unlink(missing_ok=True)
    save_config(run, f"{name}{SUFFIX}", config, f"d3rlpy {d3rlpy.__version__}", info, ref_scores)
    run.set_status("running", step=done)
    started = time.perf_counter() - (evals[-1]["wall_time"] if evals else 0.0)
    remaining = config.steps - done
    fitter = algo.fitter(
        dataset,
        n_steps=remaining,
        n_steps_per_epoch=config.eval_interval,
        logger_adapter=d3rlpy.logging.NoopAdapterFactory(),
        show_progress=False,
        save_interval=remaining + 1,
    )
    for epoch, _metrics in fitter:
        step = done + epoch * config.eval_interval
        if name == "bcq":  # 10 samples in the target while training, 100 to act (as ours)
            algo.impl._n_action_samples = config.eval_sampled_actions
        result = evaluate(
            lambda observations: algo.predict(observations.astype(np.float32)),
            info,
            num_episodes=config.eval_episodes,
            seed=config.eval_seed,
            ref_scores=ref_scores,
            progress=False,
        )
        if name == "bcq":
            algo.impl._n_action_samples = config.num_sampled_actions
        row = {
            "step": step,
            "normalized_score": float(result.normalized_score),
            "return": float(result.mean_return),
            "selection_loss": None,
            "wall_time": time.perf_counter() - started,
            "episodes": result.episodes(),
        }
        models.mkdir(parents=True, exist_ok=True)
        algo.save_model(str(models / f"d3rlpy_{step}.pt"))  # before the row that points to it
        run.append_row("eval", row)
        for old in models.glob("d3rlpy_*.pt"):
            if old.name != f"d3rlpy_{step}.pt":
                old.unlink()
        run.set_status("running", step=step)
        print(f"{run.path}: step {step} normalized score {row['normalized_score']:.1f}", flush=True)
    summary = summarize(run, f"{name}{SUFFIX}", config)  # the scores, as every run has them
    atomic_write_json(run.path / "result.json", summary)
    run.write_csv("eval")
    run.set_status("complete", step=summary["steps"])
    return summary


def report(out: Path, ours: Path, suffix: str = SUFFIX, reference: str = "d3rlpy") -> str:
    """Curves and equal-means tests of the runs in OUT named ALGORITHM{suffix} against ours
    (OUT/parity.md, OUT/curves_*.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    from dql.tables import collect_runs

    theirs = collect_runs(out)
    mine = collect_runs(ours)
    lines = [
        f"# Parity with {reference}",
        "",
        f"Ours: `{ours}`; {reference}: `{out}` (same sweep configs, data and evaluation episodes).",
        "Final = the last evaluation. Welch's t-test of equal means over seeds.",
        "",
    ]
    parity_rows = []
    for (algorithm, task), runs in theirs.runs.groupby(["algorithm", "task"]):
        if not algorithm.endswith(suffix):
            continue
        base = algorithm.removesuffix(suffix)
        seeds = sorted(runs["seed"])
        ref = mine.runs[
            (mine.runs.algorithm == base) & (mine.runs.task == task) & mine.runs.seed.isin(seeds)
        ]
        a, b = ref["final_score"].to_numpy(), runs["final_score"].to_numpy()
        p = stats.ttest_ind(a, b, equal_var=False).pvalue if min(len(a), len(b)) > 1 else np.nan
        cell = lambda x: f"{x.mean():.1f} ± {x.std(ddof=1) if len(x) > 1 else 0:.1f} ({len(x)})"  # noqa: E731
        steps = [sorted(set(r["final_step"])) for r in (ref, runs)]
        parity_rows.append(
            {
                "algorithm": base,
                "task": task,
                "seeds": ", ".join(map(str, seeds)),
                f"steps (ours / {reference})": " / ".join("/".join(map(str, s)) for s in steps),
                "ours final": cell(a) if len(a) else "-",
                f"{reference} final": cell(b),
                "p (Welch)": f"{p:.3f}" if np.isfinite(p) else "n/a (< 2 seeds a side)",
            }
        )
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, table, algo in (("ours", mine, base), (reference, theirs, algorithm)):
            ev = table.evaluations
            ev = ev[(ev.algorithm == algo) & (ev.task == task) & ev.seed.isin(seeds)]
            curve = ev.groupby("step")["normalized_score"].agg(["mean", "std", "count"])
            if curve.empty:
                continue
            ax.plot(
                curve.index, curve["mean"], label=f"{label} ({int(curve['count'].max())} seeds)"
            )
            ax.fill_between(
                curve.index,
                curve["mean"] - curve["std"].fillna(0),
                curve["mean"] + curve["std"].fillna(0),
                alpha=0.2,
            )
        ax.set(xlabel="gradient step", ylabel="normalized score", title=f"{base}, {task}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"curves_{base}_{task}.png", dpi=120)
        plt.close(fig)
    lines += [markdown_table(pd.DataFrame(parity_rows)), "", f"Commit: {git_commit()}"]
    text = "\n".join(lines) + "\n"
    (out / "parity.md").write_text(text)
    return text


def parity_cli(
    argv: list[str] | None,
    *,
    prog: str,
    doc: str,
    default_out: str,
    train: Callable[[Any, Path, argparse.Namespace], dict[str, Any]],
    suffix: str,
    reference: str,
    train_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None,
) -> int:
    """`PROG train SWEEP --only GLOB` trains the reference's versions of sweep runs with
    `train(spec, out, args)`; `PROG report --ours DIR` compares them with ours."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train_parser = sub.add_parser("train", help=f"train {reference}'s versions of sweep runs")
    train_parser.add_argument("sweep", help="sweep TOML file")
    train_arguments(train_parser)
    train_parser.add_argument("--only", action="append", default=[], metavar="GLOB", required=True)
    train_parser.add_argument("--out", default=default_out)
    rep = sub.add_parser("report", help="overlay curves and test equal means")
    rep.add_argument("--ours", required=True, help="our sweep's output directory")
    rep.add_argument("--out", default=default_out)
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        if args.command == "report":
            print(report(out, Path(args.ours), suffix=suffix, reference=reference))
            return 0
        specs = select_runs(plan_runs(load_sweep(args.sweep), out), args.only)
        results = [(spec, train(spec, out, args)) for spec in specs]
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for spec, result in results:
        print(
            f"{spec.key} ({reference}): final {result['final_score']:.1f}, "
            f"best {result['best_score']:.1f}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    return parity_cli(
        argv,
        prog="parity_d3rlpy",
        doc=__doc__,
        default_out="results/parity_d3rlpy",
        train=lambda spec, out, args: train_one(spec, out),
        suffix=SUFFIX,
        reference="d3rlpy",
    )


if __name__ == "__main__":
    sys.exit(main())
