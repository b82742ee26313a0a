"""Results tables from run directories written by hand with known scores: the tidy table, mean ±
std per dataset (final and best), domain averages, bold best entries, rliable IQM with CIs,
Welch's test against a reference, LaTeX, provenance, learning curves and the CLI."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from dql.cli import main as dql_main
from dql.data import task_name
from dql.tables import (
    EVAL_COLUMNS,
    collect_runs,
    config_hash,
    make_tables,
    render,
    score_matrices,
)
from dql.training import TrainConfig

HASHES = {
    "mujoco/hopper/medium-v0": "hash-hm",
    "mujoco/hopper/expert-v0": "hash-he",
    "mujoco/walker2d/medium-v0": "hash-wm",
}


def fake_run(
    root: Path,
    algorithm: str,
    dataset: str,
    seed: int,
    scores: list[float],
    *,
    status: str = "complete",
    interval: int = 100,
    content_hash: str | None = None,
    **config_fields: object,
) -> Path:
    """A run directory as run_training leaves it, with the given evaluation scores."""
    run = root / algorithm / task_name(dataset) / f"seed_{seed}"
    run.mkdir(parents=True)
    config = TrainConfig(
        dataset=dataset,
        seed=seed,
        steps=interval * len(scores),
        eval_interval=interval,
        eval_episodes=5,
        run_dir=str(run),
    )
    saved = {**dataclasses.asdict(config), **config_fields}
    (run / "config.json").write_text(
        json.dumps(
            {
                "algorithm": algorithm,
                "config": saved,
                "seed": seed,
                "git_commit": "c0ffee",
                "dataset": {
                    "dataset_id": dataset,
                    "content_hash": content_hash or HASHES.get(dataset, "h"),
                },
            }
        )
    )
    rows = [
        {"step": interval * (i + 1), "normalized_score": s, "return": 10 * s, "wall_time": i + 1.0}
        for i, s in enumerate(scores)
    ]
    (run / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if status == "complete":
        result = {
            "final_score": scores[-1],
            "best_score": max(scores),
            "final_return": 10 * scores[-1],
            "wall_time": len(scores),
        }
        (run / "result.json").write_text(json.dumps(result))
    (run / "status.json").write_text(json.dumps({"status": status, "error": "boom"}))
    return run


@pytest.fixture
def runs_dir(tmp_path: Path) -> tuple[Path, dict]:
    """diffusion_ql and td3bc on three datasets, iql on hopper-medium only; 3 seeds, 4
    evaluations each; one failed td3bc run on top. Returns (root, scores[algo][task][seed])."""
    rng = np.random.default_rng(0)
    root = tmp_path / "runs"
    level = {"diffusion_ql": 80.0, "td3bc": 60.0, "iql": 70.0}
    scores: dict = {}
    for algorithm, datasets in (
        ("diffusion_ql", list(HASHES)),
        ("td3bc", list(HASHES)),
        ("iql", ["mujoco/hopper/medium-v0"]),
    ):
        for dataset in datasets:
            for seed in range(3):
                curve = (level[algorithm] + rng.normal(0, 5, 4)).round(3).tolist()
                fake_run(root, algorithm, dataset, seed, curve)
                scores.setdefault(algorithm, {}).setdefault(task_name(dataset), {})[seed] = curve
    fake_run(root, "td3bc", "mujoco/hopper/medium-v0", 7, [1.0, 2.0], status="failed")
    return root, scores


def test_collect_runs_gives_one_tidy_row_per_evaluation(runs_dir):
    root, scores = runs_dir
    table = collect_runs(root)
    ev = table.evaluations
    assert list(ev.columns) == EVAL_COLUMNS
    assert len(ev) == 7 * 3 * 4  # complete runs x evaluations; the failed run is left out
    one = ev[(ev.algorithm == "td3bc") & (ev.task == "walker2d-medium") & (ev.seed == 2)]
    assert one["step"].tolist() == [100, 200, 300, 400]
    assert one["normalized_score"].tolist() == scores["td3bc"]["walker2d-medium"][2]
    assert one["return"].tolist() == [10 * s for s in scores["td3bc"]["walker2d-medium"][2]]
    assert set(ev["domain"]) == {"hopper", "walker2d"}
    # seeds of one (algorithm, dataset) share a config hash
    assert ev.groupby(["algorithm", "task"])["config_hash"].nunique().max() == 1
    (excluded,) = table.excluded
    assert excluded["status"] == "failed" and excluded["run_dir"].endswith("seed_7")
    walker = collect_runs(root, datasets=["mujoco/walker2d/medium-v0"])
    assert set(walker.evaluations["task"]) == {"walker2d-medium"} and not walker.excluded
    assert len(walker.runs) == 2 * 3


def test_the_scores_are_those_result_json_defines(runs_dir):
    root, _ = runs_dir
    run = root / "td3bc" / "hopper-medium" / "seed_0"
    result = json.loads((run / "result.json").read_text())
    (run / "result.json").write_text(
        json.dumps({**result, "final_score": 12.5, "best_score": 99.0, "selected_score": 42.0})
    )
    runs = collect_runs(root).runs
    row = runs[(runs.algorithm == "td3bc") & (runs.task == "hopper-medium") & (runs.seed == 0)]
    assert row[["final_score", "best_score", "selected_score"]].values.tolist() == [
        [12.5, 99.0, 42.0]
    ]
    (run / "result.json").write_text(json.dumps({"wall_time": 1.0}))
    table = collect_runs(root)
    assert len(table.runs) == 7 * 3 - 1
    assert [e["status"] for e in table.excluded if e["run_dir"].endswith("seed_0")] == [
        "no final_score, best_score, final_return"
    ]


def test_the_data_column_is_the_datasets_normalized_mean_episode_return(tmp_path):
    root = tmp_path / "runs"
    dataset = {"dataset_id": "local/hopper/medium-v0", "content_hash": "h", "action_low": [-1.0]}
    dataset |= {"action_high": [1.0], "observation_dim": 3, "action_dim": 1, "source": "minari"}
    dataset |= {"ref_min_score": 10.0, "ref_max_score": 210.0, "mean_episode_return": 60.0}
    for seed in range(2):
        run = fake_run(root, "bc", "local/hopper/medium-v0", seed, [30.0, 40.0])
        saved = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps({**saved, "dataset": dataset}))
    fake_run(root, "bc", "mujoco/walker2d/medium-v0", 0, [5.0])  # nothing recorded: n/a
    rows = markdown_rows(render(collect_runs(root), reps=50).markdown, "Final score")
    assert rows["header"] == ["data", "bc"]
    assert rows["hopper-medium"] == ["25.0", "**40.0 ± 0.0 (2)**"]  # 100 (60 - 10) / 200
    assert rows["walker2d-medium"][0] == "n/a"
    assert rows["hopper average"][0] == "25.0"


def test_config_hash_ignores_seed_and_paths_only():
    base = dataclasses.asdict(TrainConfig(seed=0, run_dir="a", out_dir="x"))
    same = dataclasses.asdict(TrainConfig(seed=5, run_dir="b", out_dir="y", resume=True))
    other = dataclasses.asdict(TrainConfig(seed=0, run_dir="a", batch_size=512))
    assert config_hash(base) == config_hash(same) != config_hash(other)


def cell(values: list[float]) -> str:
    return f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f} ({len(values)})"


def markdown_rows(markdown: str, section: str) -> dict[str, list[str]]:
    """{row label: cells} of the first table after the `## section` heading."""
    lines = markdown.split(f"## {section}")[1].split("\n|")[1:]
    table = ("|" + "\n|".join(lines)).split("\n\n")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    out = {"header": header[1:]}
    for line in rows[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = cells[1:]
    return out


def test_score_tables_equal_a_recomputation_by_hand(runs_dir):
    root, scores = runs_dir
    report = render(collect_runs(root), reference="td3bc", reps=200)
    for section, pick in (("Final score", lambda c: c[-1]), ("Best score", max)):
        rows = markdown_rows(report.markdown, section)
        assert rows["header"] == ["data", "diffusion_ql", "iql", "td3bc"]
        assert rows["hopper-medium"][0] == "n/a"  # no behaviour level recorded or in the store
        means = {}
        for task in ("hopper-expert", "hopper-medium", "walker2d-medium"):
            cells = dict(zip(rows["header"], rows[task]))
            for algorithm, per_task in scores.items():
                if task not in per_task:
                    assert cells[algorithm] == "–"
                    continue
                values = [pick(curve) for curve in per_task[task].values()]
                means[algorithm, task] = np.mean(values)
                assert cells[algorithm].strip("*") == cell(values)
            best = max((m, a) for (a, t), m in means.items() if t == task)[1]
            assert (
                cells[best].startswith("**")
                and sum(c.startswith("**") for c in cells.values()) == 1
            )
        hopper = dict(zip(rows["header"], rows["hopper average"]))
        for algorithm in ("diffusion_ql", "td3bc"):
            expected = np.mean(
                [means[algorithm, "hopper-medium"], means[algorithm, "hopper-expert"]]
            )
            assert hopper[algorithm].strip("*") == f"{expected:.1f}"
        assert hopper["iql"] == "n/a"  # iql lacks hopper-expert: no average over a subset
        assert dict(zip(rows["header"], rows["walker2d average"]))["iql"] == "n/a"
    assert "final score (normalized score of the last evaluation)" in report.markdown
    assert "best score (highest normalized score" in report.markdown


def test_aggregate_iqm_with_confidence_intervals_and_improvement(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "runs"
    finals = {"good": {}, "bad": {}}
    for algorithm, level in (("good", 90.0), ("bad", 20.0)):
        for dataset in ("mujoco/hopper/medium-v0", "mujoco/walker2d/medium-v0"):
            for seed in range(8):
                score = float(level + rng.normal(0, 10))
                fake_run(root, algorithm, dataset, seed, [score / 2, score])
                finals[algorithm].setdefault(task_name(dataset), []).append(score)
    table = collect_runs(root)
    matrices, tasks = score_matrices(table.runs, "final")
    assert tasks == ["hopper-medium", "walker2d-medium"] and matrices["good"].shape == (8, 2)
    report = render(table, reference="bad", reps=500)
    agg = markdown_rows(report.markdown, "Aggregate (final score)")
    assert agg["header"] == ["IQM", "95% CI", "runs", "P(X > bad)"]
    for algorithm in ("good", "bad"):
        all_scores = finals[algorithm]["hopper-medium"] + finals[algorithm]["walker2d-medium"]
        iqm = stats.trim_mean(all_scores, 0.25)
        iqm_cell, ci_cell, runs, _ = agg[algorithm]
        assert iqm_cell == f"{iqm:.1f}" and runs == "16"
        low, high = (float(x) for x in re.findall(r"-?\d+\.\d", ci_cell))
        assert low <= iqm <= high and high - low < 30
    assert agg["good"][3].startswith("1.00 [")  # every good seed beats every bad seed
    assert agg["bad"][3] == "reference"


def test_welch_test_against_the_reference(runs_dir):
    root, scores = runs_dir
    report = render(collect_runs(root), reference="td3bc", reps=200)
    tests = report.markdown.split("## Against td3bc (final score)")[1]
    for algorithm in ("diffusion_ql", "iql"):
        mine = [c[-1] for c in scores[algorithm]["hopper-medium"].values()]
        ref = [c[-1] for c in scores["td3bc"]["hopper-medium"].values()]
        expected = stats.ttest_ind(mine, ref, equal_var=False)
        rows = [[c.strip() for c in line.strip("|").split("|")] for line in tests.splitlines()]
        row = next(r for r in rows if r[:2] == ["hopper-medium", algorithm])
        assert row[3] == f"{expected.statistic:.2f}"
        assert row[4] == f"{expected.pvalue:.3f}" + (" *" if expected.pvalue < 0.05 else "")
    assert "Welch's t-test" in tests


def test_latex_renders_balanced_tables(runs_dir):
    root, _ = runs_dir
    tex = render(collect_runs(root), reference="td3bc", reps=200).latex
    assert tex.count(r"\begin{table}") == tex.count(r"\end{table}") == 3
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 3
    body = "\n".join(line for line in tex.splitlines() if not line.startswith("%"))
    assert r"diffusion\_ql" in body and "diffusion_ql" not in body.replace(r"\_", "")
    for block in re.findall(r"\\begin\{tabular\}\{(\w+)\}(.*?)\\end\{tabular\}", tex, re.S):
        spec, body = block
        rows = [r for r in body.splitlines() if r.endswith(r"\\")]
        assert rows and all(r.count("&") == len(spec) - 1 for r in rows)
    assert r"$\pm$" in tex and r"\textbf{" in tex and "±" not in tex
    assert "\\midrule\nhopper average &" in tex  # a rule between the tasks and the averages
    for line in tex.splitlines():  # every brace opened is closed on its line
        assert line.replace(r"\{", "").count("{") == line.replace(r"\}", "").count("}"), line
    assert "% Provenance:" in tex and "%   dataset: mujoco/hopper/medium-v0" in tex


def test_provenance_names_datasets_budgets_seeds_and_commits(runs_dir):
    root, _ = runs_dir
    md = render(collect_runs(root), reps=200).markdown
    provenance = md.split("## Provenance")[1]
    for dataset, content_hash in HASHES.items():
        assert f"dataset: {dataset} (content hash {content_hash})" in provenance
    assert "td3bc: step budget 400; evaluation every 100 steps, 5 episodes; seeds 0, 1, 2" in md
    assert "git commit of the runs: c0ffee" in provenance
    assert "excluded (not complete, failed):" in provenance and "seed_7: boom" in provenance
    assert "P(X > diffusion_ql)" in md  # the default reference


def test_mixed_configs_are_flagged(tmp_path):
    root = tmp_path / "runs"
    fake_run(root, "bc", "mujoco/hopper/medium-v0", 0, [50.0])
    fake_run(root, "bc", "mujoco/hopper/medium-v0", 1, [55.0], batch_size=64)
    md = render(collect_runs(root), reps=100).markdown
    assert "warning: bc on hopper-medium mixes 2 configs" in md
    assert "builds" not in md  # one build of the data


def test_runs_on_two_builds_of_one_dataset_are_flagged(tmp_path):
    root = tmp_path / "runs"
    fake_run(root, "bc", "mujoco/hopper/medium-v0", 0, [50.0], content_hash="aaaa")
    fake_run(root, "iql", "mujoco/hopper/medium-v0", 0, [60.0], content_hash="bbbb")
    md = render(collect_runs(root), reps=100).markdown
    assert "dataset: mujoco/hopper/medium-v0 (content hash aaaa, bbbb)" in md
    assert "warning: mujoco/hopper/medium-v0 comes in 2 builds (bc: aaaa; iql: bbbb)" in md


def test_cli_writes_tables_csvs_and_learning_curves(runs_dir, tmp_path, capsys):
    import matplotlib.image

    root, _ = runs_dir
    out = tmp_path / "tables"
    assert (
        dql_main(["table", str(root), "--out", str(out), "--reference", "iql", "--reps", "100"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "## Final score" in printed and "P(X > iql)" in printed
    assert (out / "results.md").read_text().startswith("# Results")
    assert (out / "results.tex").read_text().count(r"\begin{table}") == 3
    assert len((out / "evaluations.csv").read_text().splitlines()) == 1 + 84
    for task in ("hopper-expert", "hopper-medium", "walker2d-medium"):
        image = matplotlib.image.imread(out / f"curves_{task}.png")
        assert image.shape[0] > 200 and image.std() > 0.01


def test_cli_errors_are_one_line(tmp_path, runs_dir, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert dql_main(["table", str(empty)]) == 2
    assert capsys.readouterr().err == f"error: no complete runs under {empty}\n"
    assert dql_main(["table", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err
    root, _ = runs_dir
    assert dql_main(["table", str(root), "--reference", "cql", "--no-plots"]) == 2
    assert "--reference 'cql' has no complete runs" in capsys.readouterr().err


def test_best_score_table_can_drive_the_aggregate(runs_dir):
    root, scores = runs_dir
    md = make_tables(root, root / "t", score="best", reps=100, plots=False)[0].markdown
    assert md.index("## Best score") < md.index("## Final score")
    rows = markdown_rows(md, "Against diffusion_ql (best score)")
    values = [max(c) for c in scores["td3bc"]["walker2d-medium"].values()]
    ref = [max(c) for c in scores["diffusion_ql"]["walker2d-medium"].values()]
    assert rows["walker2d-medium"][1] == f"{np.mean(values) - np.mean(ref):.1f}"
