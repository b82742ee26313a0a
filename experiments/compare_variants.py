"""Final scores of one algorithm's config variants, each a sweep directory of seeds, against the
first: mean +- std over seeds, Welch's t-test and the per-seed finals.

    python experiments/compare_variants.py results/dql_choices/{public,lr_decay,normalized}/sweep \
        --out results/dql_choices/comparison.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats


def finals(sweep_dir: Path) -> dict[int, float]:
    """Final normalized score by seed of every complete run below `sweep_dir`."""
    scores = {}
    for path in sorted(sweep_dir.glob("*/*/seed_*/result.json")):
        result = json.loads(path.read_text())
        scores[int(result["seed"])] = float(result["final_score"])
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "sweeps", nargs="+", type=Path, help="sweep directories; the first is the reference"
    )
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    variants = {
        path.parent.name if path.name == "sweep" else path.name: finals(path)
        for path in args.sweeps
    }
    reference = np.array(list(next(iter(variants.values())).values()))
    lines = [
        "| variant | seeds | final score (mean +- std) | Welch p vs first | per seed |",
        "|---|---|---|---|---|",
    ]
    for index, (name, scores) in enumerate(variants.items()):
        values = np.array(list(scores.values()))
        if len(values) == 0:
            lines.append(f"| {name} | 0 | - | - | - |")
            continue
        p = (
            "-"
            if index == 0 or len(values) < 2
            else f"{stats.ttest_ind(values, reference, equal_var=False).pvalue:.2f}"
        )
        per_seed = ", ".join(f"{seed}: {score:.1f}" for seed, score in sorted(scores.items()))
        lines.append(
            f"| {name} | {len(values)} | {values.mean():.1f} +- {values.std(ddof=1) if len(values) > 1 else 0:.1f} | {p} | {per_seed} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
