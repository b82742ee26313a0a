"""The bench's report: bench.json as it was measured and bench.md, its tables rendered by
dql.report (experiments/bench.py writes both)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from dql.report import markdown_table

SEEDS_BATCHED = 5  # seeds per batched model in the bench's batched-seeds rows


def _table(rows: list[dict[str, Any]]) -> str:
    """The rows (column -> value) as a Markdown table; missing values show as '-'."""
    return markdown_table(pd.DataFrame(rows).fillna("-").astype(str))


def write_report(result: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Benchmark", ""]
    m = result["machine"]
    algorithms = result["algorithms"]
    lines += [
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['threads']} thread(s), "
        f"load average at start {m['load_average_at_start']}, at end {m.get('load_average_at_end')}"
        + (f", GPU {m['cuda']}" if m.get("cuda") else ""),
        f"Settings: {result['settings']}",
        "",
        "Ratios are candidate / reference (x: times faster, or less memory); each is the "
        "median of paired A B rounds in this run.",
        "",
        "## Training (gradient steps/s, batch 256)",
        "",
    ]
    training = [
        {
            "algorithm": r["algorithm"],
            "device": r["device"],
            "compile": r["compile"],
            "ours steps/s": r["steps_per_s"],
            "reference": r["reference"] or "-",
            "ref steps/s": r.get("reference_steps_per_s", "-"),
            "ratio": _x(r.get("train_ratio")),
            "ratio (CPU time)": _x(r.get("train_ratio_cpu")),
        }
        for r in algorithms
    ]
    training += [
        {
            "algorithm": f"{r['algorithm']} ({v['variant']})",
            "device": r["device"],
            "compile": v["variant"] != "no compile" and r["compile"],
            "ours steps/s": v["steps_per_s"],
            "reference": r["reference"] or "-",
            "ref steps/s": r.get("reference_steps_per_s", "-"),
            "ratio": _x(v["ratio"]),
            "ratio (CPU time)": _x(v.get("ratio_cpu")),
        }
        for r in algorithms
        for v in r.get("variants", [])
    ]
    lines.append(_table(training))
    if result.get("matmul_gflops"):
        lines += [
            "",
            f"Roofline (CPU): a bare fp32 256x256x256 matmul runs at {result['matmul_gflops']:.0f} "
            "GFLOP per CPU-second in this run. Matmul FLOPs per step are counted by "
            "torch.utils.flop_counter on one eager step of each implementation; the ceiling is "
            "the ratio the reference would show against an implementation of the same FLOPs "
            "running at that peak.",
            "",
            _table(
                [
                    {
                        "algorithm": r["algorithm"],
                        "GFLOP/step ours": r["gflop_per_step"],
                        "GFLOP/step ref": r.get("reference_gflop_per_step") or "-",
                        "ours % of peak": _pct(r.get("fraction_of_peak")),
                        "ref % of peak": _pct(r.get("reference_fraction_of_peak")),
                        "fp32 ceiling ratio": _x(r.get("fp32_ceiling_ratio")),
                    }
                    for r in algorithms
                    if r["device"] == "cpu" and r.get("gflop_per_step")
                ]
            ),
        ]
    if result.get("diffusion_ql_efficiency"):
        e = result["diffusion_ql_efficiency"]
        lines += [
            "",
            f"Diffusion-QL: {e['gflop_per_step']:.2f} GFLOP per step; per CPU-second ours runs "
            f"at {e['ours_gflops']:.0f} GFLOP/s = {100 * e['ours_fraction']:.0f}% and the "
            f"reference at {100 * e['reference_fraction']:.0f}% of the rate of a bare fp32 "
            f"256x256x256 matmul measured in this run ({e['matmul_gflops']:.0f} GFLOP/s).",
        ]
    acting = [
        {
            "algorithm": r["algorithm"],
            "ours 1 obs": r["act_ms_1"],
            "ref 1 obs": r.get("reference_act_ms_1", "-"),
            "ratio 1 obs": _x(r.get("act_ratio_1")),
            "ours 10 obs": r.get("act_ms_10", "-"),
            "ref 10 obs": r.get("reference_act_ms_10", "-"),
            "ratio 10 obs": _x(r.get("act_ratio_10")),
        }
        for r in algorithms
    ]
    memory = [
        {
            "algorithm": r["algorithm"],
            "ours": r["peak_mib"],
            "reference": r.get("reference_peak_mib", "-"),
            "ratio": _x(r.get("memory_ratio")),
            "method": r["memory_method"],
        }
        for r in algorithms
    ]
    lines += ["", "## Action selection (ms per act call)", "", _table(acting)]
    lines += ["", "## Peak memory of training steps (MiB above the resident set before them)", ""]
    lines.append(_table(memory))
    if result.get("evaluation"):
        evaluation = [
            {
                "algorithm": r["algorithm"],
                "episodes x steps": f"{r['episodes']} x {r['episode_steps']}",
                "parallel": r["parallel_episodes_per_s"],
                "one after another": r["sequential_episodes_per_s"],
                "ratio": _x(r["parallel_vs_sequential"]),
                "reference one after another": r.get("reference_sequential_episodes_per_s", "-"),
                "ratio to reference": _x(r.get("parallel_vs_reference_sequential")),
                "env alone": _x(r.get("free_policy_parallel_vs_sequential")),
                "act alone": _x(r.get("act_alone")),
            }
            for r in result["evaluation"]
        ]
        lines += ["", "## Evaluation (episodes/s, Hopper-v5)", "", _table(evaluation)]
        lines += [
            "",
            "The gain of each part alone: 'env alone' is the same measurement with a policy "
            "that costs nothing (the env's own step, which envs in one process cannot share); "
            "'act alone' is 10 x act(1 obs) / act(10 obs). The parallel gain is a mix of the "
            "two, weighted by where the time goes (plus per-episode setup, same in both modes).",
        ]
    if result.get("batched_seeds_generic"):
        peak = result.get("matmul_gflops")
        rows = []
        for b in result["batched_seeds_generic"]:
            for t in b["settings"]:
                gflop = t.get("single_gflop_per_step")
                f = gflop * t["single_steps_per_s"] / peak if gflop and peak else None
                rows.append(
                    {
                        "algorithm": t["algorithm"],
                        "precision": t["precision"],
                        "threads": t["threads"],
                        "1 seed steps/s": t["single_steps_per_s"],
                        "batched steps/s": t["batched_steps_per_s"],
                        "time ratio": f"{t['batched_time_over_single']}x",
                        "CPU-time ratio": f"{t['batched_cpu_time_over_single']}x",
                        "gain": f"{t['seed_steps_per_s_gain']}x",
                        "1 seed at f of peak": "-" if f is None else f"{100 * f:.0f}%",
                        "ratio bound": "-" if f is None else f"{SEEDS_BATCHED * f:.2f}x",
                    }
                )
        lines += [
            "",
            "## Batched seeds (every other algorithm: the generic stack, dql.batched_seeds)",
            "",
            f"{SEEDS_BATCHED} seeds as one model (parameters stacked, per-seed maths under "
            "torch.func.vmap) against one seed, same settings on both sides. Time ratio: wall "
            f"time of a batched step over a single-seed step (target at most 3x in bf16). Bound "
            f"(fp32): one seed at fraction f of the fp32 matmul peak needs {SEEDS_BATCHED}f of it "
            "for a 1x ratio, so the ratio cannot fall below "
            f"{SEEDS_BATCHED}f (f from FlopCounterMode's count x steps/s over the peak).",
            "",
            _table(rows),
        ]
    if result.get("batched_seeds"):
        b = result["batched_seeds"]
        rows = [
            {
                "compile": t.get("compile"),
                "precision": t.get("precision", "fp32"),
                "threads": t.get("threads", "-"),
                "1 seed steps/s": t["single_steps_per_s"],
                "batched steps/s": t["batched_steps_per_s"],
                "time ratio": f"{t['batched_time_over_single']}x",
                "CPU-time ratio": f"{t['batched_cpu_time_over_single']}x",
                "gain": f"{t['seed_steps_per_s_gain']}x",
            }
            for t in b.get("settings", [b])
        ]
        lines += [
            "",
            "## Batched seeds (Diffusion-QL)",
            "",
            f"{b['seeds']} seeds as one model against one seed, same settings on both sides "
            f"({b['device']}); time ratio: wall time of a batched step over a single-seed step "
            "(the target is at most 3.5x); gain: seed-steps per second over one seed at a time.",
            "",
            _table(rows),
        ]
        single = [r for r in algorithms if r["algorithm"] == "diffusion_ql"]
        if single and single[0].get("fraction_of_peak"):
            needed = SEEDS_BATCHED * single[0]["fraction_of_peak"] / 3.5
            lines += [
                "",
                f"Bound: one seed's fp32 step (training table above) already runs at "
                f"{100 * single[0]['fraction_of_peak']:.0f}% of the fp32 matmul peak, so "
                f"{SEEDS_BATCHED} seeds (5x the FLOPs) in 3.5x its time would need "
                f"{100 * needed:.0f}% of peak.",
            ]
    if result.get("q_gradient"):
        rows = [
            {
                "T": r["n_timesteps"],
                "device": r["device"],
                "compile": r["compile"],
                "chain steps/s": r["chain_steps_per_s"],
                "approx steps/s": r["approx_steps_per_s"],
                "approx / chain": f"{r['approx_over_chain']}x",
            }
            for r in result["q_gradient"]
        ]
        lines += [
            "",
            "## EDP action approximation (Diffusion-QL)",
            "",
            "`--q-gradient approx` (L_q at L_bc's one-step reconstruction) against `chain` (L_q "
            "through the whole reverse chain, the paper), same compile and precision; the "
            "critic's target chain is the same in both. Target: at least 1.6x at T = 5.",
            "",
            _table(rows),
        ]
    if result["notes"]:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in result["notes"]]
    path = out / "bench.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"
