"""Perturbation panel: how a trained policy's score falls when what it sees or does is disturbed.

Perturbations (strength 0 is the plain evaluation, run once per agent and shared by all kinds):
- obs_noise sigma: Gaussian noise of std sigma added to the *normalised* observation, i.e.
  raw += sigma * dataset_std * N(0, 1): sigma = 0.1 is a tenth of each feature's spread in the
  data (raw units for runs trained with --no-normalize-observations);
- action_noise sigma: Gaussian noise of std sigma * max_action added to the action, then clipped;
- delay k: the env receives the action chosen k steps earlier; the first k steps send zeros;
- drop_prob p: at each step and in each episode independently, with probability p the policy
  sees the observation it saw the step before instead of the new one (a dropped sensor frame;
  several drops in a row hold the same stale frame).
Perturbation noise comes from a numpy Generator seeded by (evaluation seed, kind, strength), the
same for every agent (common random numbers: agents differ by policy, not by noise draws);
torch's RNG, which a stochastic policy samples from, is seeded with the evaluation seed as in
training. Episode i starts from reset seed `seed + i` in every setting.

    dql panel RUN_DIR [RUN_DIR ...] [--obs-noise 0 0.1 0.3 1] [--action-noise ...]
              [--delay 0 1 2 4] [--drop-prob 0 0.25 0.5 0.75] [--episodes 10]
              [--out results/panel] [--trade num_candidates=1,5,50] [--record]

Outputs in --out: panel.csv (one row per agent x perturbation x strength: normalized score,
its standard error over episodes, return, episodes per end reason), panel.md (agents with
latency and nominal score, then one table per perturbation with agents side by side),
panel.png (normalized score against strength, one panel per perturbation). With --trade, a
setting is varied (e.g. Diffusion-QL's candidates per state) and speed.csv / speed.md /
speed.png give ms per action against nominal score. With --record, episode 0 of every setting
is saved as a trace (traces/) and rendered by replaying it (videos/, see dql.traces).
Passing no perturbation flag runs all four with their default strengths; passing some runs
only those.
"""

from __future__ import annotations

import copy
import re
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from dql import report
from dql.data import ObservationNormalizer
from dql.errors import UserError
from dql.evaluation import EvalResult, evaluate
from dql.export import TrainedRun, load_run, parse_value
from dql.latency import SPEED_KNOBS, measure, ms_per_action
from dql.traces import end_reason_counts, load_traces, render_episode, save_traces

if TYPE_CHECKING:
    from dql.cli import PanelArgs

PERTURBATIONS = ("obs_noise", "action_noise", "delay", "drop_prob")
NOMINAL = "none"  # the unperturbed evaluation
DEFAULT_STRENGTHS: dict[str, tuple[float, ...]] = {
    "obs_noise": (0.0, 0.1, 0.3, 1.0),
    "action_noise": (0.0, 0.1, 0.3, 1.0),
    "delay": (0, 1, 2, 4),
    "drop_prob": (0.0, 0.25, 0.5, 0.75),
}
UNITS = {
    "obs_noise": "std of noise / dataset std",
    "action_noise": "std of noise / max action",
    "delay": "steps",
    "drop_prob": "probability",
}

Hook = Callable[[np.ndarray], np.ndarray]


# --------------------------------------------------------------------------- perturbations


class ObservationNoise:
    """obs + sigma * std * N(0, 1): noise of std sigma in normalised units."""

    def __init__(self, sigma: float, std: np.ndarray, rng: np.random.Generator) -> None:
        self.scale, self.rng = sigma * std, rng

    def __call__(self, observations: np.ndarray) -> np.ndarray:
        noise = self.rng.standard_normal(observations.shape) * self.scale
        return (observations + noise).astype(np.float32)


class ActionNoise:
    """action + sigma * max_action * N(0, 1) (the env clips afterwards)."""

    def __init__(self, sigma: float, max_action: float, rng: np.random.Generator) -> None:
        self.scale, self.rng = sigma * max_action, rng

    def __call__(self, actions: np.ndarray) -> np.ndarray:
        return (actions + self.scale * self.rng.standard_normal(actions.shape)).astype(np.float32)


class ActionDelay:
    """The env receives the action chosen `steps` calls earlier; zeros until then. All episodes
    of an evaluation start together, so one queue of batches serves them all."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.queue: deque[np.ndarray] | None = None

    def __call__(self, actions: np.ndarray) -> np.ndarray:
        if self.queue is None:
            self.queue = deque(np.zeros_like(actions) for _ in range(self.steps))
        self.queue.append(np.array(actions))
        return self.queue.popleft()


class DroppedObservations:
    """With probability p per episode and step, repeat the observation the policy saw last."""

    def __init__(self, p: float, rng: np.random.Generator) -> None:
        self.p, self.rng = p, rng
        self.last: np.ndarray | None = None

    def __call__(self, observations: np.ndarray) -> np.ndarray:
        if self.last is None:
            seen = observations
        else:
            dropped = self.rng.random(observations.shape[0]) < self.p
            seen = np.where(dropped[:, None], self.last, observations)
        self.last = np.array(seen)
        return seen


def check_strength(kind: str, strength: float) -> None:
    if kind == NOMINAL and strength == 0:
        return
    if kind not in PERTURBATIONS:
        raise UserError(f"unknown perturbation {kind!r}; choose one of {', '.join(PERTURBATIONS)}")
    if kind == "delay" and not (float(strength).is_integer() and strength >= 0):
        raise UserError(f"--delay takes whole numbers of steps >= 0, got {strength}")
    if kind == "drop_prob" and not 0 <= strength < 1:
        raise UserError(f"--drop-prob must be in [0, 1), got {strength}")
    if not strength >= 0:
        raise UserError(f"--{kind.replace('_', '-')} must be >= 0, got {strength}")


def perturbation_hooks(
    kind: str,
    strength: float,
    *,
    normalizer: ObservationNormalizer,
    max_action: float,
    rng: np.random.Generator,
) -> tuple[Hook | None, Hook | None]:
    """(observation_hook, action_hook) for `dql.evaluation.evaluate`; fresh state per call."""
    check_strength(kind, strength)
    if strength == 0:
        return None, None
    if kind == "obs_noise":
        return ObservationNoise(strength, normalizer.std, rng), None
    if kind == "action_noise":
        return None, ActionNoise(strength, max_action, rng)
    if kind == "delay":
        return None, ActionDelay(int(strength))
    return DroppedObservations(strength, rng), None


def perturbation_rng(seed: int, kind: str, strength: float) -> np.random.Generator:
    """The noise stream of one setting: the same for every agent evaluated in it."""
    return np.random.default_rng([seed, zlib.crc32(f"{kind}:{float(strength)!r}".encode())])


def evaluate_run(
    run: TrainedRun,
    kind: str = NOMINAL,
    strength: float = 0.0,
    *,
    episodes: int = 10,
    seed: int | None = None,
    record_traces: bool = False,
    progress: bool = False,
) -> EvalResult:
    """Evaluate a loaded run under one perturbation setting (strength 0: unperturbed)."""
    seed = int(run.config.get("eval_seed", 10_000) if seed is None else seed)
    obs_hook, action_hook = perturbation_hooks(
        kind,
        strength,
        normalizer=run.normalizer,
        max_action=run.max_action,
        rng=perturbation_rng(seed, kind, strength),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return evaluate(
            run.agent.act,
            run.info,
            num_episodes=episodes,
            seed=seed,
            normalizer=run.normalizer,
            ref_scores=run.ref_scores,
            env_id=run.config.get("env_id"),
            max_episode_steps=run.config.get("max_episode_steps"),
            observation_hook=obs_hook,
            action_hook=action_hook,
            progress=progress,
            record_traces=record_traces,
        )


# --------------------------------------------------------------------------- the panel


def result_row(result: EvalResult) -> dict[str, Any]:
    scores = result.normalized_scores
    sem = float(scores.std(ddof=1) / np.sqrt(len(scores))) if len(scores) > 1 else 0.0
    return {
        "normalized_score": float(scores.mean()),
        "score_sem": sem,
        "return": result.mean_return,
        "length": float(result.lengths.mean()),
        "episodes": len(scores),
        **end_reason_counts(result.end_reasons),
    }


def unique_labels(runs: Sequence[TrainedRun]) -> list[str]:
    labels = [run.label for run in runs]
    return [
        f"{label} ({run.path})" if labels.count(label) > 1 else label
        for label, run in zip(labels, runs)
    ]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")


def evaluate_setting(
    run: TrainedRun,
    label: str,
    kind: str,
    strength: float,
    episodes: int,
    seed: int | None,
    record_dir: Path | None,
) -> dict[str, Any]:
    """One panel cell; with `record_dir`, episode 0 is kept as a trace and rendered to video."""
    record = record_dir is not None
    result = evaluate_run(run, kind, strength, episodes=episodes, seed=seed, record_traces=record)
    if record_dir is not None:
        name = slug(f"{label}_{kind}_{strength:g}")
        save_traces(
            record_dir / "traces",
            result,
            info=run.info,
            env_id=run.config.get("env_id"),
            max_episode_steps=run.config.get("max_episode_steps"),
            metadata={"agent": label, "perturbation": kind, "strength": strength},
            name=name,
        )
        traces = load_traces(record_dir / "traces" / f"{name}.json")
        render_episode(traces, 0, record_dir / "videos" / f"{name}.mp4")
    return result_row(result)


def run_panel(
    runs: Sequence[TrainedRun],
    strengths: dict[str, Sequence[float]],
    *,
    episodes: int = 10,
    seed: int | None = None,
    out_dir: str | Path | None = None,
    record: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Evaluate every run under every setting: (panel rows, per-agent summary rows).

    The unperturbed evaluation is run once per agent and reported as strength 0 of each kind.
    With `record`, episode 0 of every setting is saved as a trace and rendered to video."""
    for kind, values in strengths.items():
        for value in values:
            check_strength(kind, value)
    if record and out_dir is None:
        raise UserError("--record needs an output directory")
    record_dir = Path(out_dir) if record and out_dir is not None else None
    rows, agents = [], []
    for run, label in zip(runs, unique_labels(runs)):
        nominal = evaluate_setting(run, label, NOMINAL, 0.0, episodes, seed, record_dir)
        # timed on a copy: a stateful agent (Diffuser keeps its plan) must not carry the
        # timing calls into the evaluations that follow
        latency = measure(copy.deepcopy(run.agent), run.observation_dim)
        agents.append(
            {
                "agent": label,
                "run_dir": str(run.path),
                "checkpoint": run.checkpoint,
                "nominal_score": nominal["normalized_score"],
                "nominal_sem": nominal["score_sem"],
                "ms_per_action_b1": ms_per_action(latency, batch_size=1),
                "ms_per_action_b10": ms_per_action(latency, batch_size=10),
                "device": next(iter(latency["devices"]), None),
                **latency["knobs"],
            }
        )
        log(f"{label}: nominal score {nominal['normalized_score']:.1f}")
        for kind, values in strengths.items():
            for strength in values:
                row = (
                    nominal
                    if strength == 0
                    else evaluate_setting(run, label, kind, strength, episodes, seed, record_dir)
                )
                rows.append({"agent": label, "perturbation": kind, "strength": strength, **row})
                if strength != 0:
                    log(f"{label}: {kind} {strength:g}: score {row['normalized_score']:.1f}")
    return pd.DataFrame(rows), pd.DataFrame(agents)


def run_trade(
    run_dirs: Sequence[str],
    name: str,
    values: Sequence[Any],
    *,
    checkpoint: str = "last",
    device: str = "cpu",
    episodes: int = 10,
    seed: int | None = None,
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Nominal score and latency of each run with setting `name` set to each of `values`
    (the agent rebuilt with it). Runs whose algorithm has no such setting are skipped."""
    rows = []
    for run_dir in run_dirs:
        for value in values:
            try:
                run = load_run(
                    run_dir, checkpoint=checkpoint, device=device, overrides={name: value}
                )
            except UserError as exc:
                if "has no setting" in str(exc):
                    log(f"{run_dir}: skipped in --trade ({exc})")
                    break
                raise
            latency = measure(copy.deepcopy(run.agent), run.observation_dim)
            row = result_row(evaluate_run(run, episodes=episodes, seed=seed))
            rows.append(
                {
                    "agent": run.label.removesuffix(f" {name}={value}"),
                    name: value,
                    "ms_per_action_b1": ms_per_action(latency, batch_size=1),
                    "ms_per_action_b10": ms_per_action(latency, batch_size=10),
                    "normalized_score": row["normalized_score"],
                    "score_sem": row["score_sem"],
                }
            )
            log(
                f"{rows[-1]['agent']} {name}={value}: {rows[-1]['ms_per_action_b1']:.2f} ms/action, "
                f"score {row['normalized_score']:.1f}"
            )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- reports


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub markdown table, floats to 3 significant digits (1 decimal from 10 up)."""
    return report.markdown_table(frame.map(_cell))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def panel_markdown(panel: pd.DataFrame, agents: pd.DataFrame, episodes: int) -> str:
    lines = [
        "# Perturbation panel",
        "",
        f"Normalized score, mean ± standard error over {episodes} episodes per setting "
        "(same reset seeds and perturbation noise for every agent).",
        "",
        "## Agents",
        "",
        markdown_table(_knobs_as_text(agents.drop(columns=["run_dir"]))),
    ]
    for kind in panel["perturbation"].unique():
        part = panel[panel["perturbation"] == kind].copy()
        part["cell"] = [
            f"{m:.1f} ± {s:.1f}" for m, s in zip(part["normalized_score"], part["score_sem"])
        ]
        table = part.pivot(index="strength", columns="agent", values="cell")
        table = table[list(part["agent"].unique())].reset_index()  # agents in the given order
        falls = part.groupby("strength")["terminated"].sum().reindex(table["strength"]).to_numpy()
        table["episodes terminated (all agents)"] = falls
        lines += ["", f"## {kind} ({UNITS[kind]})", "", markdown_table(table)]
    return "\n".join(lines) + "\n"


def _knobs_as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Speed knobs only some agents have: their values as given, blank elsewhere (not 50.0/nan)."""

    def show(value: Any) -> str:
        if isinstance(value, float) and np.isnan(value):
            return ""
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)

    frame = frame.copy()
    for name in SPEED_KNOBS:
        if name in frame:
            frame[name] = [show(v) for v in frame[name]]
    return frame


def plot_panel(panel: pd.DataFrame, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(panel["perturbation"].unique())
    fig, axes = plt.subplots(1, len(kinds), figsize=(4 * len(kinds), 3.4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        part = panel[panel["perturbation"] == kind]
        for agent, rows in part.groupby("agent", sort=False):
            rows = rows.sort_values("strength")
            x, y, e = rows["strength"], rows["normalized_score"], rows["score_sem"]
            ax.plot(x, y, marker="o", label=agent)
            ax.fill_between(x, y - e, y + e, alpha=0.2)
        ax.set_title(kind)
        ax.set_xlabel(UNITS[kind])
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("normalized score")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_trade(trade: pd.DataFrame, name: str, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for agent, rows in trade.groupby("agent", sort=False):
        ax.errorbar(
            rows["ms_per_action_b1"],
            rows["normalized_score"],
            rows["score_sem"],
            marker="o",
            label=agent,
        )
        for x, y, v in zip(rows["ms_per_action_b1"], rows["normalized_score"], rows[name]):
            ax.annotate(
                f"{name}={v}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    ax.set_xlabel("ms per action (batch 1)")
    ax.set_ylabel("normalized score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


# --------------------------------------------------------------------------- command


def parse_trade(text: str) -> tuple[str, list[Any]]:
    """NAME=V1,V2,... -> (name, values)."""
    name, sep, values = text.partition("=")
    items = [v for v in values.split(",") if v]
    if not sep or not name or not items:
        raise UserError(f"--trade takes NAME=V1,V2,..., e.g. num_candidates=1,5,50; got {text!r}")
    return name.replace("-", "_"), [parse_value(v) for v in items]


def panel_command(args: PanelArgs) -> int:
    """`dql panel`: run the perturbation panel (and a speed trade) over trained runs."""
    if not args.run_dirs:
        raise UserError("give at least one RUN_DIR")
    if args.episodes < 1:
        raise UserError(f"--episodes must be >= 1, got {args.episodes}")
    from dql.training import resolve_device

    device = resolve_device(args.device)
    given = {k: list(getattr(args, k)) for k in PERTURBATIONS if getattr(args, k) is not None}
    strengths = given or {k: list(v) for k, v in DEFAULT_STRENGTHS.items()}
    runs = [load_run(d, checkpoint=args.checkpoint, device=device) for d in args.run_dirs]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    panel, agents = run_panel(
        runs, strengths, episodes=args.episodes, seed=args.seed, out_dir=out, record=args.record
    )
    panel.to_csv(out / "panel.csv", index=False)
    agents.to_csv(out / "agents.csv", index=False)
    text = panel_markdown(panel, agents, args.episodes)
    if args.trade:
        name, values = parse_trade(args.trade)
        trade = run_trade(
            args.run_dirs,
            name,
            values,
            checkpoint=args.checkpoint,
            device=device,
            episodes=args.episodes,
            seed=args.seed,
        )
        if not len(trade):
            raise UserError(f"--trade {name}: none of the runs' algorithms has this setting")
        trade.to_csv(out / "speed.csv", index=False)
        speed = markdown_table(trade)
        (out / "speed.md").write_text(f"# Latency against score: {name}\n\n{speed}\n")
        plot_trade(trade, name, out / "speed.png")
        text += f"\n## Speed trade: {name}\n\n{speed}\n"
    (out / "panel.md").write_text(text)
    plot_panel(panel, out / "panel.png")
    print(text)
    print(f"wrote {out}/panel.md, panel.csv, panel.png" + (", speed.*" if args.trade else ""))
    return 0
