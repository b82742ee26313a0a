"""Learning curve of a behaviour-policy SAC run (its log.jsonl), with the exported checkpoints.

    python experiments/plot_sac_log.py results/behaviour_policies/hopper_sac_seed0_log.jsonl \
        --policies dql/policies --out results/behaviour_policies/hopper_sac_seed0.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", type=Path, help="log.jsonl of the SAC run")
    parser.add_argument("--policies", type=Path, help="folder with <env>_<level>.json exports")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in args.log.read_text().splitlines() if line.strip()]
    steps = np.array([r["step"] for r in rows])
    mean = np.array([r["eval_return_mean"] for r in rows])
    std = np.array([r["eval_return_std"] for r in rows])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(steps, mean, marker=".", label=f"{rows[0]['eval_episodes']} stochastic episodes")
    ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    for path in sorted(args.policies.glob("*.json")) if args.policies else []:
        meta = json.loads(path.read_text())
        ax.scatter(meta["train_step"], meta["recheck_return"], marker="*", s=150, zorder=3)
        label = f"{meta['level']}: {meta['recheck_return']:.0f} ({meta['recheck_episodes']} eps)"
        ax.annotate(
            label,
            (meta["train_step"], meta["recheck_return"]),
            xytext=(5, 5),
            textcoords="offset points",
        )
    ax.set(xlabel="SAC environment steps", ylabel="episode return", title=args.log.stem)
    ax.legend(loc="upper left")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
