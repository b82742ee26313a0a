"""`make demo`: on a small pendulum dataset where behaviour cloning provably fails and the good
actions are identifiable only by their value, train BC, TD3+BC, IQL and Diffusion-QL over 3
seeds through the sweep runner, print the results table and what the numbers support.

    dql demo [--workers N] [--out DIR] [--sweep FILE]       (python -m dql.demo: the same)

The data is `dql data build pendulum-flip` (dql.builders.pendulum, built in seconds): each step
of an InvertedPendulum-v5 controller takes the balancing action or its negation with probability
1/2 each, so the data's mean action does not balance and MSE behaviour cloning drops the pole,
while a policy that picks the higher-valued of the two actions balances. The summary states,
for each algorithm, whether it beats BC by Welch's test over the seeds (and says so when it
cannot tell); it claims nothing the numbers do not show. The demo does not show how the
algorithms rank on locomotion: that takes 100k+ gradient steps a run (results/evidence_hopper/).

Everything goes under runs/demo/, which git ignores (a demo never rewrites tracked files; the
snapshot in results/demo/ is made on purpose, `python -m dql.demo --out results/demo`): the
dataset store (datasets/), the runs (runs/), the tables (results.md, results.tex, CSVs) and the
learning curves (curves_*.png). Running it again reuses the dataset and every finished run; an
interrupted demo continues where it stopped. The sweep is experiments/sweeps/demo.toml.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dql.cli import DemoArgs

REPO = Path(__file__).resolve().parent.parent
DEMO_DIR = REPO / "runs" / "demo"
SWEEP_FILE = REPO / "experiments" / "sweeps" / "demo.toml"
DATASET_ID = "local/pendulum/flip-v0"
REFERENCE = "bc"


def say(message: str = "") -> None:
    print(message, flush=True)


def ensure_dataset() -> None:
    """Build the demo's dataset unless a readable one is there; a bad one is rebuilt."""
    from dql.builders.pendulum import build_pendulum
    from dql.data import load_dataset
    from dql.errors import UserError

    try:
        load_dataset(DATASET_ID)
        say(f"dataset {DATASET_ID}: already built, reused")
        return
    except UserError:
        pass
    say(f"building {DATASET_ID} (dql data build pendulum-flip)...")
    report = build_pendulum("flip", overwrite=True, progress=sys.stdout.isatty())
    say(report.summary())


def verdicts(runs, reference: str = REFERENCE) -> list[str]:
    """One line per algorithm: its final score and what Welch's test against the reference
    over the seeds says, in words that claim no more than p < 0.05 allows."""
    from dql.tables import summary_table, welch_tests

    tests = welch_tests(runs, reference).set_index("algorithm")
    means = summary_table(runs).set_index("algorithm")  # the demo's one dataset
    ref = means.loc[reference]
    lines = [
        f"  {reference}: final {ref['mean']:.1f} +- {ref['std']:.1f} ({int(ref['seeds'])} seeds)"
    ]
    for algorithm, row in means.drop(index=reference).iterrows():
        p = tests.loc[algorithm, "p"] if algorithm in tests.index else float("nan")
        if not p < 0.05:
            verdict = f"not distinguishable from {reference} at these seeds (p = {p:.2f})"
        elif row["mean"] > ref["mean"]:
            verdict = f"above {reference} (Welch p = {p:.3f})"
        else:
            verdict = f"below {reference} (Welch p = {p:.3f})"
        lines.append(
            f"  {algorithm}: final {row['mean']:.1f} +- {row['std']:.1f} ({int(row['seeds'])} "
            f"seeds), {verdict}"
        )
    return lines


# --------------------------------------------------------------------------- the demo


def demo_command(args: DemoArgs) -> int:
    """`dql demo` (`make demo`): build the data, run the sweep, print the table and verdicts."""

    from dql.errors import UserError
    from dql.sweep import load_sweep, run_sweep
    from dql.tables import make_tables

    started = time.perf_counter()
    out: Path = args.out or DEMO_DIR
    runs_dir = out / "runs"
    os.environ["MINARI_DATASETS_PATH"] = str(out / "datasets")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    say(
        "dql demo: BC, TD3+BC, IQL and Diffusion-QL on pendulum-flip (MSE behaviour cloning "
        f"cannot balance this data), 3 seeds, short budgets. Output: {out}"
    )
    try:
        ensure_dataset()
        say(f"[{_clock(started)}] dataset ready")
        sweep = load_sweep(args.sweep or SWEEP_FILE)
        sweep.datasets = [DATASET_ID]
        report = run_sweep(sweep, runs_dir, workers=args.workers)
        if report.interrupted_by_user:
            say("demo interrupted; run `make demo` again to continue where it stopped")
            return 130
        say(f"[{_clock(started)}] training done; tables...")
        table_report, table, written = make_tables(
            runs_dir, out, reference=REFERENCE, datasets=[DATASET_ID]
        )
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        say("demo interrupted; run `make demo` again to continue where it stopped")
        return 130
    say()
    say(table_report.markdown)
    say(f"wrote {', '.join(str(p.relative_to(out)) for p in written)} in {out}")
    say(f"demo finished in {_clock(started)}")
    say()
    say(f"What these runs show (final scores, against {REFERENCE}):")
    for line in verdicts(table.runs):
        say(line)
    say("Short runs on a toy task: they show which algorithms use the value of actions where")
    say("cloning fails, not how they rank on locomotion. That takes 100k+ steps a run: see")
    say("results/evidence_hopper/")
    say("(dql sweep experiments/sweeps/evidence_hopper.toml) and the README's Results section.")
    if not report.all_complete:
        print("some runs did not complete: see the table's provenance lines", file=sys.stderr)
        return 1
    return 0


def _clock(started: float) -> str:
    seconds = int(time.perf_counter() - started)
    return f"{seconds // 60}:{seconds % 60:02d}"


if __name__ == "__main__":
    from dql.cli import main

    sys.exit(main(["demo", *sys.argv[1:]]))
