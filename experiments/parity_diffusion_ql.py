"""Parity with the Diffusion-QL authors' code: their agent (agents/ql_diffusion.py of
github.com/Zhendong-Wang/Diffusion-Policies-for-Offline-RL) trained with the settings of our
sweep runs, on the same data and seeds, evaluated on the same seeded episodes at the same steps.

    git clone https://github.com/Zhendong-Wang/Diffusion-Policies-for-Offline-RL ../authors_dql
    python experiments/parity_diffusion_ql.py train SWEEP.toml --authors-code ../authors_dql \
        --only 'diffusion_ql/hopper-medium-expert/seed_0' [--out results/parity_authors_dql]
    python experiments/parity_diffusion_ql.py report --ours results/evidence_hopper/sweep \
        [--out results/parity_authors_dql]

The checkout is imported from the path given (never copied into this repository); its
requirements beyond ours are `tabulate` and `python-dateutil` (its logger), not d4rl or gym:
the script feeds the agent itself. What is theirs and what is ours:
- theirs: `Diffusion_QL` (networks, initialisation, losses, EMA, Polyak targets, optimisers,
  gradient clipping, the Q1/Q2 coin from numpy), `Data_Sampler` (uniform minibatches from
  torch's RNG, their reward transforms) and `sample_action` (50 candidates, softmax over the
  target critics' min-Q), called once per state as their `eval_policy` does;
- ours: the dataset (our `load_dataset`, in their `d4rl.qlearning_dataset` layout:
  `terminals` are true terminations, time-limit ends bootstrap), the evaluation
  (`dql.evaluation.evaluate`: the sweep's eval seed and episodes, our normalised score) and the
  run directory, OUT/diffusion_ql_authors/TASK/seed_N (config.json, eval.jsonl, result.json,
  status.json), so `dql table OUT` reads it. Seeding as their main.py: torch and numpy seeded
  with the run's seed before the agent is built.
- the lr: their `--lr_decay` steps a cosine with T_max = epochs once per 50-epoch block (the lr
  ends at ~99.9 % of its start), so it is run with `lr_decay=False`, which is our default.
Settings their code cannot express (observation normalisation, EDP's approximation, argmax or
EMA acting, other widths, a critic lr other than 3e-4, another number of backup actions) stop
the run with an error naming them. The mean BC loss of each evaluation block is recorded as the
row's `selection_loss`, as our runs record it, and the block's mean critic and Q losses as
`critic_loss` and `q_loss` (ours: the mean of metrics.csv's rows over the same steps).

After every evaluation the agent (networks, EMA, targets, optimisers, step, torch and numpy
RNG states) is saved to OUT/.../checkpoints/authors_STEP.pt (git-ignored); a rerun continues
from the last evaluation whose checkpoint is there, bit-identical to an uninterrupted run.

`report` overlays our curves and theirs per task (OUT/curves_diffusion_ql_TASK.png) and
writes OUT/parity.md with Welch's t-test of equal means at the last evaluation.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "experiments"):
    if str(path) not in sys.path:  # run as a script from anywhere
        sys.path.insert(0, str(path))

from parity_d3rlpy import parity_cli, reference_run, save_config  # noqa: E402

from dql.data import load_dataset, resolve_ref_scores  # noqa: E402
from dql.errors import UserError  # noqa: E402
from dql.evaluation import evaluate  # noqa: E402
from dql.runs import atomic_write_json  # noqa: E402
from dql.training import resolve_device, summarize  # noqa: E402

SUFFIX = "_authors"
REFERENCE = "the authors' code"
# our reward transforms under their Data_Sampler's names
REWARD_TUNE = {
    "none": "no",
    "zscore": "normalize",
    "normalize": "normalize",
    "locomotion": "iql_locomotion",
    "cql_antmaze": "cql_antmaze",
    "antmaze": "iql_antmaze",
}
# fields whose value their agent hard-codes, with that value
FIXED = {
    "normalize_observations": False,
    "q_gradient": "chain",
    "action_selection": "softmax",
    "act_with_ema": False,
    "num_candidates": 50,
    "num_backup_actions": 10,
    "critic_lr": 3e-4,
    "hidden": (256, 256, 256),
    "time_dim": 16,
    "lr_decay": False,
}


def import_authors_code(checkout: Path) -> tuple[Any, Any]:
    """Their Diffusion_QL and Data_Sampler, imported from a checkout of their repository."""
    if not (checkout / "agents" / "ql_diffusion.py").is_file():
        raise UserError(
            f"{checkout} is not a checkout of Diffusion-Policies-for-Offline-RL "
            "(no agents/ql_diffusion.py); clone github.com/Zhendong-Wang/Diffusion-Policies-for-Offline-RL"
        )
    sys.path.insert(0, str(checkout.resolve()))
    try:
        agent = importlib.import_module("agents.ql_diffusion").Diffusion_QL
        sampler = importlib.import_module("utils.data_sampler").Data_Sampler
    except ImportError as exc:
        raise UserError(f"importing the authors' code from {checkout} failed: {exc}") from exc
    return agent, sampler


def checkout_commit(checkout: Path) -> str | None:
    """The commit of their checkout, so a run says which version of their code it ran."""
    done = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() or None


def check_expressible(config: Any) -> None:
    """Stop on settings their agent has no switch for."""
    wrong = [
        f"{name} = {getattr(config, name)!r} (theirs: {value!r})"
        for name, value in FIXED.items()
        if (tuple(getattr(config, name)) if name == "hidden" else getattr(config, name)) != value
    ]
    if config.reward_transform not in REWARD_TUNE:
        wrong.append(
            f"reward_transform = {config.reward_transform!r} (theirs: {sorted(REWARD_TUNE)})"
        )
    if wrong:
        raise UserError("the authors' code cannot run this config: " + "; ".join(wrong))


def train_one(spec: Any, out: Path, checkout: Path) -> dict[str, Any]:
    """The authors' version of one sweep run; resumable at its evaluations."""
    import torch

    if spec.algorithm != "diffusion_ql":
        raise UserError(
            f"{spec.key}: the authors' code is Diffusion-QL; this run is {spec.algorithm}"
        )
    config, run = reference_run(spec, out, SUFFIX)
    check_expressible(config)
    Agent, DataSampler = import_authors_code(checkout)
    name = f"{spec.algorithm}{SUFFIX}"
    if run.is_complete():
        return run.result()
    torch.set_num_threads(max(config.num_threads, 1))
    device = resolve_device(config.device)
    data = load_dataset(config.dataset)
    info = data.info
    ref_scores = resolve_ref_scores(info, config.ref_min_score, config.ref_max_score)

    torch.manual_seed(config.seed)  # as their main.py, before the agent is built
    np.random.seed(config.seed)
    columns = ("observations", "actions", "next_observations", "rewards", "terminals")
    sampler = DataSampler(
        {key: getattr(data, key) for key in columns}, device, REWARD_TUNE[config.reward_transform]
    )
    agent = Agent(
        state_dim=data.observations.shape[1],
        action_dim=data.actions.shape[1],
        max_action=float(np.max(info.action_high)),
        device=device,
        discount=config.discount,
        tau=config.tau,
        max_q_backup=config.max_q_backup,
        eta=config.eta,
        beta_schedule=config.beta_schedule,
        n_timesteps=config.n_timesteps,
        ema_decay=config.ema_decay,
        step_start_ema=config.step_start_ema,
        update_ema_every=config.update_ema_every,
        lr=config.actor_lr,
        lr_decay=False,
        grad_norm=config.grad_norm,
    )
    parts = ("actor", "ema_model", "critic", "critic_target", "actor_optimizer", "critic_optimizer")
    models = run.path / "checkpoints"
    evals = run.rows("eval") if (run.path / "eval.jsonl").exists() else []
    done = evals[-1]["step"] if evals else 0
    if done and (models / f"authors_{done}.pt").exists():  # the agent of the last evaluation
        state = torch.load(models / f"authors_{done}.pt", weights_only=False)
        for part in parts:
            getattr(agent, part).load_state_dict(state[part])
        agent.step = state["step"]
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
    else:
        done, evals = 0, []
        (run.path / "eval.jsonl").unlink(missing_ok=True)
    reference = f"{REFERENCE}, {checkout.resolve()} at {checkout_commit(checkout)}"
    save_config(run, name, config, reference, info, ref_scores)
    run.set_status("running", step=done)
    started = time.perf_counter() - (evals[-1]["wall_time"] if evals else 0.0)

    def act(observations: np.ndarray) -> np.ndarray:  # their eval_policy: one state per call
        return np.stack([agent.sample_action(np.array(o)) for o in observations])

    for step in range(done + config.eval_interval, config.steps + 1, config.eval_interval):
        metric = agent.train(sampler, iterations=config.eval_interval, batch_size=config.batch_size)
        result = evaluate(
            act,
            info,
            num_episodes=config.eval_episodes,
            seed=config.eval_seed,
            ref_scores=ref_scores,
            progress=False,
        )
        row = {
            "step": step,
            "normalized_score": float(result.normalized_score),
            "return": float(result.mean_return),
            "selection_loss": float(np.mean(metric["bc_loss"])),
            # the block's mean critic and Q losses, against the mean of our metrics.csv rows
            "critic_loss": float(np.mean(metric["critic_loss"])),
            "q_loss": float(np.mean(metric["ql_loss"])),
            "wall_time": time.perf_counter() - started,
            "episodes": result.episodes(),
        }
        models.mkdir(parents=True, exist_ok=True)
        state = {part: getattr(agent, part).state_dict() for part in parts}
        state.update(
            step=agent.step, torch_rng=torch.get_rng_state(), numpy_rng=np.random.get_state()
        )
        torch.save(state, models / f"authors_{step}.pt")  # before the row that points to it
        run.append_row("eval", row)
        for old in models.glob("authors_*.pt"):
            if old.name != f"authors_{step}.pt":
                old.unlink()
        run.set_status("running", step=step)
        print(f"{run.path}: step {step} normalized score {row['normalized_score']:.1f}", flush=True)
    summary = summarize(run, name, config)  # the scores, as every run has them
    atomic_write_json(run.path / "result.json", summary)
    run.write_csv("eval")
    run.set_status("complete", step=summary["steps"])
    return summary


def main(argv: list[str] | None = None) -> int:
    def checkout_argument(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--authors-code", required=True, type=Path, help="checkout of their repository"
        )

    return parity_cli(
        argv,
        prog="parity_diffusion_ql",
        doc=__doc__,
        default_out="results/parity_authors_dql",
        train=lambda spec, out, args: train_one(spec, out, args.authors_code),
        suffix=SUFFIX,
        reference=REFERENCE,
        train_arguments=checkout_argument,
    )


if __name__ == "__main__":
    sys.exit(main())
