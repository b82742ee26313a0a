"""Results tables from run directories: one tidy table of every evaluation, Markdown and LaTeX
score tables, aggregate IQM with bootstrap confidence intervals, tests against a reference
algorithm, and learning curves.

    dql table RUNS_DIR [--reference ALGO] [--out DIR] [--score final|best] [--reps N]

What is computed, so that a table says what it shows:
- Per run: the final score (normalized score of the last evaluation) and the best score (the
  highest normalized score over its evaluations -- optimistic: it selects on the test episodes).
- Per dataset and algorithm: mean and sample standard deviation (ddof=1) over seeds, and the
  number of seeds. Per domain (the first part of the task name, e.g. hopper): the mean of the
  per-dataset means, shown only where the algorithm has every dataset of the domain.
- Aggregate: interquartile mean (IQM) over all (seed, dataset) scores with 95% stratified
  bootstrap confidence intervals (rliable; runs resampled within each dataset), on the datasets
  every algorithm has, with the same number of seeds per dataset (the first seeds, sorted).
- Against the reference (--reference, default diffusion_ql when present): per dataset, Welch's
  t-test (two-sided, unequal variances, scipy) on per-seed scores; in aggregate, rliable's
  probability of improvement P(algorithm > reference) with a 95% bootstrap interval.
- Only complete runs count; failed or unfinished runs are listed, not averaged.

Outputs in --out (default RUNS_DIR): results.md, results.tex, evaluations.csv (the tidy table),
scores.csv (one row per run), curves_<task>.png (mean and a +-1 std band over seeds).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dql.errors import UserError
from dql.report import latex_escape, latex_table, markdown_table

if TYPE_CHECKING:
    from dql.cli import TableArgs

SCORE_KINDS = ("final", "best")
# A run's scores as its result.json defines them (dql.training.summarize): never recomputed here.
RESULT_SCORES = ("final_score", "best_score", "final_return")
DEFAULT_REFERENCE = "diffusion_ql"
EVAL_COLUMNS = [
    "algorithm",
    "dataset",
    "task",
    "domain",
    "seed",
    "step",
    "normalized_score",
    "return",
    "wall_time",
    "config_hash",
    "run_dir",
]


# --------------------------------------------------------------------------- collecting runs


def config_hash(config: dict[str, Any]) -> str:
    """Hash of a run's config without the keys that do not change results (seed, paths, ...):
    runs of one (algorithm, dataset) that share it differ only by seed."""
    from dql.training import TrainConfig, result_neutral_fields

    neutral = result_neutral_fields(TrainConfig)  # the shared fields declare their roles
    kept = {k: v for k, v in config.items() if k not in neutral}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:12]


def find_run_dirs(root: str | Path) -> list[Path]:
    """Every run directory (a folder with config.json or status.json) under `root`; failed runs
    set aside by a sweep (seed_N.failed-K) are left out."""
    root = Path(root)
    found = {p.parent for name in ("config.json", "status.json") for p in root.rglob(name)}
    return sorted(p for p in found if ".failed-" not in p.name)


@dataclass
class RunsTable:
    """The tidy evaluation table of the complete runs, one row per run, and what was left out."""

    evaluations: pd.DataFrame  # EVAL_COLUMNS, one row per (run, evaluation step)
    runs: pd.DataFrame  # one row per complete run, with final and best scores
    excluded: list[dict[str, Any]] = field(default_factory=list)  # run_dir, status, error
    provenance: dict[str, Any] = field(default_factory=dict)


def _shown(path: Path) -> str:
    """A path as tables print it: relative to the working directory when under it, so a
    committed table holds no absolute path of the machine that made it."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def collect_runs(root: str | Path, datasets: Sequence[str] | None = None) -> RunsTable:
    """Read config.json, eval.jsonl and result.json of every run under `root` (only the runs on
    `datasets`, when given)."""
    from dql.data import task_name
    from dql.runs import RunDirectory, read_run_config

    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such directory")
    eval_rows, run_rows, excluded = [], [], []
    hashes: dict[str, set[str]] = {}  # dataset id -> content hashes seen
    commits: set[str] = set()
    behaviour_cache: dict[tuple[str, str], float | None] = {}
    for path in find_run_dirs(root):
        run = RunDirectory(path)
        saved = read_run_config(path) if (path / "config.json").exists() else None
        if datasets is not None and (saved is None or saved["config"]["dataset"] not in datasets):
            continue
        if saved is None or not run.is_complete():
            status = run.status()
            excluded.append(
                {
                    "run_dir": _shown(path),
                    "status": status.get("status"),
                    "error": status.get("error"),
                }
            )
            continue
        config = saved["config"]
        result = run.result()
        evals = run.rows("eval")
        if not evals:
            excluded.append({"run_dir": _shown(path), "status": "no evaluations", "error": None})
            continue
        dataset = config["dataset"]
        task = task_name(dataset)
        key = {
            "algorithm": saved["algorithm"],
            "dataset": dataset,
            "task": task,
            "domain": task.split("-")[0],
            "seed": int(config["seed"]),
        }
        chash = config_hash(config)
        for row in evals:
            eval_rows.append(
                {
                    **key,
                    "step": int(row["step"]),
                    "normalized_score": float(row["normalized_score"]),
                    "return": float(row["return"]),
                    "wall_time": float(row.get("wall_time", math.nan)),
                    "config_hash": chash,
                    "run_dir": _shown(path),
                }
            )
        if not all(k in result for k in RESULT_SCORES):  # result.json defines the scores
            missing = ", ".join(k for k in RESULT_SCORES if k not in result)
            excluded.append({"run_dir": _shown(path), "status": f"no {missing}", "error": None})
            continue
        final = max(evals, key=lambda r: r["step"])
        selected = result.get("selected_score")
        behaviour = _behaviour_score(saved, behaviour_cache)
        run_rows.append(
            {
                **key,
                "final_score": float(result["final_score"]),
                "best_score": float(result["best_score"]),
                "selected_score": float(selected) if selected is not None else math.nan,
                "final_return": float(result["final_return"]),
                "final_step": int(final["step"]),
                "steps": int(config["steps"]),
                "eval_interval": int(config["eval_interval"]),
                "eval_episodes": int(config["eval_episodes"]),
                "wall_time": float(result.get("wall_time", final.get("wall_time", math.nan))),
                "config_hash": chash,
                "dataset_hash": saved.get("dataset", {}).get("content_hash"),
                "behaviour_score": behaviour,
                "git_commit": saved.get("git_commit"),
                "package_version": saved.get("package_version"),
                "run_dir": _shown(path),
            }
        )
        hashes.setdefault(dataset, set()).add(str(saved.get("dataset", {}).get("content_hash")))
        if saved.get("git_commit"):
            commits.add(saved["git_commit"])
    evaluations = pd.DataFrame(eval_rows, columns=EVAL_COLUMNS)
    runs = pd.DataFrame(run_rows)
    if not runs.empty:
        runs = runs.sort_values(["task", "algorithm", "seed"]).reset_index(drop=True)
        evaluations = evaluations.sort_values(["task", "algorithm", "seed", "step"])
        evaluations = evaluations.reset_index(drop=True)
    provenance = {"root": _shown(root), "datasets": hashes, "git_commits": sorted(commits)}
    return RunsTable(evaluations, runs, excluded, provenance)


def _behaviour_score(saved: dict[str, Any], cache: dict[tuple[str, str], float | None]) -> float:
    """The normalized mean episode return of the run's data: from its config.json, or (runs
    saved before that was recorded) from the dataset in the store, if its content hash still
    matches; NaN when neither is at hand."""
    from dql.data import DatasetInfo, load_dataset, normalized_score, resolve_ref_scores

    dataset, config = saved.get("dataset", {}), saved["config"]
    mean_return = dataset.get("mean_episode_return")
    if mean_return is None:
        key = (config["dataset"], str(dataset.get("content_hash")))
        if key not in cache:
            cache[key] = None
            try:
                info = load_dataset(config["dataset"]).info
                if info.content_hash == key[1]:
                    cache[key] = info.mean_episode_return
            except (UserError, OSError, ValueError):  # not in this store: no behaviour row
                pass
        mean_return = cache[key]
    if mean_return is None or not dataset:
        return math.nan
    try:
        low, high = resolve_ref_scores(
            DatasetInfo.from_dict(dataset), config.get("ref_min_score"), config.get("ref_max_score")
        )
    except (UserError, KeyError):  # no reference scores anywhere: no normalized level
        return math.nan
    return float(normalized_score(mean_return, low, high))


# --------------------------------------------------------------------------- statistics


def score_column(kind: str) -> str:
    if kind not in SCORE_KINDS:
        raise UserError(f"--score must be final or best, got {kind!r}")
    return f"{kind}_score"


def summary_table(runs: pd.DataFrame, kind: str = "final") -> pd.DataFrame:
    """Mean, sample std (ddof=1) and number of seeds per (task, algorithm)."""
    column = score_column(kind)
    grouped = runs.groupby(["task", "algorithm"])[column]
    out = grouped.agg(mean="mean", std=lambda s: s.std(ddof=1), seeds="count").reset_index()
    out["domain"] = out["task"].str.split("-").str[0]
    return out


def domain_averages(runs: pd.DataFrame, kind: str = "final") -> pd.DataFrame:
    """Mean over a domain's datasets of the per-dataset means; NaN where an algorithm lacks one."""
    summary = summary_table(runs, kind)
    tasks_per_domain = runs.groupby("domain")["task"].nunique()
    rows = []
    for (domain, algorithm), group in summary.groupby(["domain", "algorithm"]):
        complete = group["task"].nunique() == tasks_per_domain[domain]
        mean = group["mean"].mean() if complete else math.nan
        rows.append({"domain": domain, "algorithm": algorithm, "mean": mean})
    return pd.DataFrame(rows, columns=["domain", "algorithm", "mean"])


def score_matrices(
    runs: pd.DataFrame, kind: str = "final"
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Per algorithm a (seeds, tasks) matrix for rliable, on the tasks every algorithm has, with
    as many seeds per task as the algorithm's sparsest task has (its first seeds, sorted)."""
    column = score_column(kind)
    algorithms = sorted(runs["algorithm"].unique())
    tasks = sorted(
        set.intersection(*(set(runs[runs["algorithm"] == a]["task"]) for a in algorithms))
    )
    matrices = {}
    for algorithm in algorithms:
        mine = runs[(runs["algorithm"] == algorithm) & runs["task"].isin(tasks)]
        per_task = [mine[mine["task"] == t].sort_values("seed")[column].to_numpy() for t in tasks]
        n = min(len(scores) for scores in per_task) if per_task else 0
        if n:
            matrices[algorithm] = np.stack([scores[:n] for scores in per_task], axis=1)
    return matrices, tasks


@dataclass
class Aggregate:
    algorithm: str
    iqm: float
    iqm_low: float
    iqm_high: float
    runs: int
    improvement: float | None = None  # P(algorithm > reference)
    improvement_low: float | None = None
    improvement_high: float | None = None


def aggregate_scores(
    runs: pd.DataFrame,
    kind: str = "final",
    reference: str | None = None,
    reps: int = 2000,
    seed: int = 0,
) -> tuple[list[Aggregate], list[str], str | None]:
    """IQM with 95% stratified bootstrap CIs and, against `reference`, the probability of
    improvement. Returns (aggregates, tasks used, a note when rliable is unavailable)."""
    try:
        from rliable import library as rly
        from rliable import metrics
    except Exception as exc:  # rliable's arch dependency breaks under some pandas versions
        return [], [], f"aggregate IQM unavailable: rliable failed to import ({exc})"
    matrices, tasks = score_matrices(runs, kind)
    if not matrices:
        return [], tasks, "aggregate IQM unavailable: no dataset is shared by all algorithms"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # arch: random_state -> generator
        return _rliable_estimates(rly, metrics, matrices, tasks, reference, reps, seed)


def _rliable_estimates(
    rly: Any,
    metrics: Any,
    matrices: dict[str, np.ndarray],
    tasks: list[str],
    reference: str | None,
    reps: int,
    seed: int,
) -> tuple[list[Aggregate], list[str], str | None]:
    points, intervals = rly.get_interval_estimates(
        matrices,
        lambda x: np.array([metrics.aggregate_iqm(x)]),
        reps=reps,
        random_state=np.random.RandomState(seed),
    )
    out = [
        Aggregate(
            a,
            float(points[a][0]),
            float(intervals[a][0, 0]),
            float(intervals[a][1, 0]),
            int(matrices[a].size),
        )
        for a in matrices
    ]
    if reference in matrices:
        others = [a for a in matrices if a != reference]
        pairs = {a: [matrices[a], matrices[reference]] for a in others}
        if pairs:
            p_points, p_intervals = rly.get_interval_estimates(
                pairs,
                metrics.probability_of_improvement,
                reps=max(200, reps // 4),  # a Mann-Whitney U per task per replicate: slower
                random_state=np.random.RandomState(seed),
            )
            for agg in out:
                if agg.algorithm in pairs:
                    agg.improvement = float(np.ravel(p_points[agg.algorithm])[0])
                    low, high = np.reshape(p_intervals[agg.algorithm], (2, -1))[:, 0]
                    agg.improvement_low, agg.improvement_high = float(low), float(high)
    return out, tasks, None


def welch_tests(runs: pd.DataFrame, reference: str, kind: str = "final") -> pd.DataFrame:
    """Per task and algorithm: Welch's two-sided t-test of its per-seed scores against the
    reference's. p is NaN with fewer than 2 seeds on a side or no variance on both."""
    from scipy import stats

    column = score_column(kind)
    rows = []
    for task, group in runs.groupby("task"):
        ref = group[group["algorithm"] == reference][column].to_numpy()
        if not len(ref):
            continue
        for algorithm in sorted(set(group["algorithm"]) - {reference}):
            other = group[group["algorithm"] == algorithm][column].to_numpy()
            p, t = math.nan, math.nan
            if len(ref) >= 2 and len(other) >= 2 and (ref.std() > 0 or other.std() > 0):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # one side constant: fine
                    result = stats.ttest_ind(other, ref, equal_var=False)
                t, p = float(result.statistic), float(result.pvalue)
            diff = other.mean() - ref.mean()
            rows.append({"task": task, "algorithm": algorithm, "difference": diff, "t": t, "p": p})
    return pd.DataFrame(rows, columns=["task", "algorithm", "difference", "t", "p"])


# --------------------------------------------------------------------------- rendering


@dataclass
class Report:
    markdown: str
    latex: str


def _fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _cells(
    runs: pd.DataFrame, kind: str, algorithms: list[str]
) -> tuple[list[str], list[tuple[str, list[tuple[str, bool]]]]]:
    """Rows (label, [(cell text, is best)]) of a score table: tasks then domain averages."""
    summary = summary_table(runs, kind)
    behaviour = (
        runs.groupby("task")["behaviour_score"].mean()
        if "behaviour_score" in runs
        else pd.Series(dtype=float)
    )
    rows = []
    for task in sorted(summary["task"].unique()):
        mine = summary[summary["task"] == task].set_index("algorithm")
        best = mine["mean"].max()
        cells = [(_fmt(behaviour.get(task, math.nan)), False)]
        for algorithm in algorithms:
            if algorithm not in mine.index:
                cells.append(("–", False))
                continue
            r = mine.loc[algorithm]
            std = "n/a" if r["seeds"] < 2 else _fmt(r["std"])
            text = f"{_fmt(r['mean'])} ± {std} ({int(r['seeds'])})"
            cells.append((text, bool(np.isclose(r["mean"], best))))
        rows.append((task, cells))
    averages = domain_averages(runs, kind)
    for domain in sorted(averages["domain"].unique()):
        mine = averages[averages["domain"] == domain].set_index("algorithm")["mean"]
        best = mine.max()
        tasks = [t for t in behaviour.index if t.split("-")[0] == domain]
        cells = [(_fmt(behaviour[tasks].mean() if tasks else math.nan), False)]
        for algorithm in algorithms:
            value = mine.get(algorithm, math.nan)
            is_best = math.isfinite(value) and bool(np.isclose(value, best))
            cells.append((_fmt(value), is_best))
        rows.append((f"{domain} average", cells))
    return ["data", *algorithms], rows


def _caption(kind: str) -> str:
    what = (
        "final score (normalized score of the last evaluation)"
        if kind == "final"
        else "best score (highest normalized score over a run's evaluations; optimistic, it "
        "selects on the evaluation episodes)"
    )
    return (
        f"D4RL-normalized {what}: mean ± sample std (ddof=1) over seeds, number of seeds in "
        "parentheses; domain rows average the per-dataset means. Best mean per row in bold. "
        "data: the behaviour level, the normalized mean episode return of the dataset itself."
    )


def provenance_lines(table: RunsTable) -> list[str]:
    """Datasets (ids and content hashes), budgets, evaluation, seeds, commits, exclusions."""
    from dql.runs import git_commit

    runs = table.runs
    lines = [f"runs: {table.provenance['root']} ({len(runs)} complete runs)"]
    for dataset, hashes in sorted(table.provenance["datasets"].items()):
        lines.append(f"dataset: {dataset} (content hash {', '.join(sorted(hashes))})")
        if len(hashes) > 1 and not runs.empty:  # e.g. rebuilt on another kind of CPU
            on = runs[runs["dataset"] == dataset].groupby("algorithm")["dataset_hash"]
            who = "; ".join(f"{a}: {', '.join(sorted(set(h)))}" for a, h in on)
            lines.append(
                f"warning: {dataset} comes in {len(hashes)} builds ({who}): rows compare "
                "algorithms trained on different data"
            )
    for algorithm, group in runs.groupby("algorithm"):
        budgets = ", ".join(str(s) for s in sorted(group["steps"].unique()))
        intervals = ", ".join(str(s) for s in sorted(group["eval_interval"].unique()))
        episodes = ", ".join(str(s) for s in sorted(group["eval_episodes"].unique()))
        seeds = ", ".join(str(s) for s in sorted(group["seed"].unique()))
        lines.append(
            f"{algorithm}: step budget {budgets}; evaluation every {intervals} steps, "
            f"{episodes} episodes; seeds {seeds}"
        )
    commits = ", ".join(table.provenance["git_commits"]) or "unknown"
    lines.append(f"git commit of the runs: {commits}; of this table: {git_commit() or 'unknown'}")
    for (algorithm, task), group in runs.groupby(["algorithm", "task"]):
        hashes = sorted(group["config_hash"].unique())
        if len(hashes) > 1:
            lines.append(
                f"warning: {algorithm} on {task} mixes {len(hashes)} configs ({', '.join(hashes)})"
            )
    for item in table.excluded:
        error = f": {item['error']}" if item.get("error") else ""
        lines.append(f"excluded (not complete, {item['status']}): {item['run_dir']}{error}")
    return lines


def render(
    table: RunsTable,
    *,
    score: str = "final",
    reference: str | None = None,
    reps: int = 2000,
) -> Report:
    """Markdown and LaTeX for the runs: both score tables (the chosen one first), aggregate IQM,
    significance against the reference, provenance."""
    runs = table.runs
    if runs.empty:
        raise UserError(f"no complete runs under {table.provenance['root']}")
    score_column(score)
    algorithms = sorted(runs["algorithm"].unique())
    if reference is None:
        reference = DEFAULT_REFERENCE if DEFAULT_REFERENCE in algorithms else algorithms[0]
    elif reference not in algorithms:
        raise UserError(
            f"--reference {reference!r} has no complete runs here; choose one of "
            f"{', '.join(algorithms)}"
        )
    kinds = [score] + [k for k in SCORE_KINDS if k != score]
    aggregates, agg_tasks, agg_note = aggregate_scores(runs, score, reference, reps)
    tests = welch_tests(runs, reference, score)
    provenance = provenance_lines(table)

    md = [f"# Results: {table.provenance['root']}", ""]
    tex = [f"% Results: {table.provenance['root']}", "% Provenance:"]
    tex += [f"%   {line}" for line in provenance]
    for kind in kinds:
        header, rows = _cells(runs, kind, algorithms)
        columns = ["dataset", *header]
        texts = pd.DataFrame(
            [[label, *(t for t, _ in cells)] for label, cells in rows], columns=columns
        )
        bold = pd.DataFrame([[False, *(b for _, b in cells)] for _, cells in rows], columns=columns)
        shown = texts.mask(bold, "**" + texts + "**")
        md += [f"## {kind.capitalize()} score", "", _caption(kind), "", markdown_table(shown), ""]
        first_average = next(
            (k for k, (label, _) in enumerate(rows) if label.endswith(" average")), None
        )
        tex.append(
            latex_table(
                texts,
                caption=_caption(kind),
                label=f"tab:{kind}-score",
                bold=bold,
                rule_before_row=first_average,
            )
        )

    md += [f"## Aggregate ({score} score)", ""]
    if agg_note:
        md += [agg_note, ""]
    else:
        improvement = [
            f"{agg.improvement:.2f} [{agg.improvement_low:.2f}, {agg.improvement_high:.2f}]"
            if agg.improvement is not None
            else None
            for agg in aggregates
        ]
        frame = pd.DataFrame(
            {
                "algorithm": [agg.algorithm for agg in aggregates],
                "IQM": [_fmt(agg.iqm) for agg in aggregates],
                "95% CI": [f"[{_fmt(agg.iqm_low)}, {_fmt(agg.iqm_high)}]" for agg in aggregates],
                "runs": [str(agg.runs) for agg in aggregates],
                f"P(X > {reference})": [
                    poi or ("reference" if agg.algorithm == reference else "n/a")
                    for poi, agg in zip(improvement, aggregates)
                ],
            }
        )
        md += [
            f"Interquartile mean (IQM) over all (seed, dataset) {score} scores with 95% stratified "
            f"bootstrap confidence intervals (rliable, {reps} resamples of seeds within each "
            f"dataset), on {len(agg_tasks)} dataset(s) shared by every algorithm: "
            f"{', '.join(agg_tasks)}. P(X > {reference}): rliable's probability of improvement "
            "(Mann-Whitney, averaged over datasets) with its 95% bootstrap interval.",
            "",
            markdown_table(frame),
            "",
        ]
        latex_frame = frame.drop(columns="runs")
        latex_frame[latex_frame.columns[-1]] = [poi or "–" for poi in improvement]
        tex.append(
            latex_table(
                latex_frame,
                caption=f"Aggregate {score} score: IQM with 95% stratified bootstrap CIs "
                f"(rliable); probability of improvement over {reference}.",
                label="tab:aggregate",
                header=[
                    "Algorithm",
                    "IQM",
                    r"95\% CI",
                    rf"$P(X > \mathrm{{{latex_escape(reference)}}})$",
                ],
            )
        )

    significant = [math.isfinite(p) and p < 0.05 for p in tests["p"]]
    frame = pd.DataFrame(
        {
            "dataset": tests["task"],
            "algorithm": tests["algorithm"],
            "difference": [_fmt(v) for v in tests["difference"]],
            "t": [_fmt(v, 2) for v in tests["t"]],
            "p": [_fmt(p, 3) + (" *" if star else "") for p, star in zip(tests["p"], significant)],
        }
    )
    md += [
        f"## Against {reference} ({score} score)",
        "",
        "Welch's t-test (two-sided, unequal variances) of per-seed scores, per dataset; "
        "difference = mean(X) - mean(reference); n/a with fewer than 2 seeds on a side.",
        "",
        markdown_table(frame),
    ]
    md += ["", "\\* p < 0.05", "", "## Provenance", ""]
    md += [f"- {line}" for line in provenance]
    md.append("")
    return Report("\n".join(md), "\n".join(tex))


# --------------------------------------------------------------------------- plots


def plot_learning_curves(evaluations: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """One PNG per task: per algorithm the mean normalized score over seeds against steps, with
    a +-1 std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for task, group in evaluations.groupby("task"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for algorithm, mine in group.groupby("algorithm"):
            per_step = mine.groupby("step")["normalized_score"]
            mean = per_step.mean()
            std = per_step.std(ddof=1).fillna(0.0)
            seeds = mine["seed"].nunique()
            (line,) = ax.plot(
                mean.index, mean.values, marker="o", ms=3, label=f"{algorithm} ({seeds} seeds)"
            )
            ax.fill_between(
                mean.index, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0
            )
        ax.set_title(f"{task}: mean ± std over seeds")
        ax.set_xlabel("gradient steps")
        ax.set_ylabel("normalized score")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        file = out / f"curves_{task}.png"
        fig.savefig(file, dpi=120)
        plt.close(fig)
        files.append(file)
    return files


# --------------------------------------------------------------------------- entry points


def make_tables(
    runs_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    score: str = "final",
    reference: str | None = None,
    reps: int = 2000,
    plots: bool = True,
    datasets: Sequence[str] | None = None,
) -> tuple[Report, RunsTable, list[Path]]:
    """Collect, render and write everything; returns the report, the data and written files."""
    table = collect_runs(runs_dir, datasets)
    report = render(table, score=score, reference=reference, reps=reps)
    out = Path(out_dir) if out_dir else Path(runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.md", out / "results.tex", out / "evaluations.csv", out / "scores.csv"]
    written[0].write_text(report.markdown)
    written[1].write_text(report.latex)
    table.evaluations.to_csv(written[2], index=False)
    table.runs.to_csv(written[3], index=False)
    if plots:
        written += plot_learning_curves(table.evaluations, out)
    return report, table, written


def table_command(args: TableArgs) -> int:
    """`dql table`: write the tables and curves of finished runs; print the Markdown."""
    if args.reps < 10:
        raise UserError(f"--reps must be >= 10, got {args.reps}")
    report, _, written = make_tables(
        args.runs_dir,
        args.out,
        score=args.score,
        reference=args.reference,
        reps=args.reps,
        plots=not args.no_plots,
    )
    print(report.markdown)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
