"""The demo's printed summary claims no more than Welch's test over the seeds allows."""

from __future__ import annotations

import pandas as pd

from dql.demo import verdicts


def runs(scores: dict[str, list[float]]) -> pd.DataFrame:
    rows = [
        {"algorithm": a, "task": "pendulum-flip", "seed": s, "final_score": v, "best_score": v}
        for a, values in scores.items()
        for s, v in enumerate(values)
    ]
    return pd.DataFrame(rows)


def test_only_a_significant_difference_is_called_above_or_below():
    lines = verdicts(
        runs(
            {
                "bc": [10.0, 11.0, 12.0],
                "better": [80.0, 82.0, 81.0],
                "noisy": [5.0, 40.0, 10.0],  # higher mean, but three seeds cannot tell
                "worse": [1.0, 1.5, 0.5],
            }
        )
    )
    assert lines[0] == "  bc: final 11.0 +- 1.0 (3 seeds)"
    by_name = {line.split(":")[0].strip(): line for line in lines[1:]}
    assert "above bc (Welch p = 0.000)" in by_name["better"]
    assert "not distinguishable from bc at these seeds" in by_name["noisy"]
    assert "below bc" in by_name["worse"]


def test_one_seed_is_never_a_finding():
    (_, line) = verdicts(runs({"bc": [10.0, 12.0], "single": [90.0]}))
    assert "not distinguishable" in line and "p = nan" in line
