"""Locomotion datasets (Gymnasium MuJoCo v5) built the D4RL way from SB3 SAC behaviour policies.

Recipe (D4RL, Fu et al. 2020, with Minari's per-episode seeds):
    random         uniform actions
    expert         the best SAC checkpoint (by evaluation return), stochastic actions
    medium         the checkpoint whose evaluation return is closest to a third of the expert's
    medium-replay  the SAC replay buffer up to the medium checkpoint, cut into its episodes
    medium-expert  the medium and expert datasets concatenated (2 x --size transitions)
Actions are sampled from the stochastic policy; episode i is reset with seed + i. Time-limit ends
are truncations, falls are terminations; the episode cut at --size ends as a truncation.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from dql import __version__
from dql.builders.common import (
    REF_SEED,
    ActFn,
    BuildReport,
    check_positive,
    collect_episodes,
    mean_return,
    minari_root,
    prepare_dataset_dir,
    uniform_policy,
    write_dataset,
)
from dql.builders.policy import Policy, load_policy, save_policy
from dql.errors import DatasetError, UserError

PACKAGED_POLICIES = Path(__file__).resolve().parent.parent / "policies"
QUALITIES = ("random", "medium", "medium-replay", "medium-expert", "expert")
REQUIREMENTS = ["gymnasium[mujoco]>=1.0", "mujoco>=3.3,<3.12"]


@dataclass(frozen=True)
class LocomotionRecipe:
    """How the behaviour policies of one environment are trained (mirrored in
    experiments/datasets/recipes.toml)."""

    env_id: str
    train_steps: int  # SB3 SAC environment steps (default hyperparameters)
    checkpoint_every: int = 10_000  # steps between checkpoints (actor weights + eval return)
    eval_episodes: int = 10  # stochastic-policy episodes per checkpoint evaluation
    medium_fraction: float = 1 / 3  # medium = checkpoint with return closest to this x expert


RECIPES: dict[str, LocomotionRecipe] = {
    "hopper": LocomotionRecipe("Hopper-v5", train_steps=300_000),
    "halfcheetah": LocomotionRecipe("HalfCheetah-v5", train_steps=1_000_000),
    "walker2d": LocomotionRecipe("Walker2d-v5", train_steps=1_000_000),
    "ant": LocomotionRecipe("Ant-v5", train_steps=1_000_000),
}


def default_policy_dir() -> Path:
    """Where trained and exported behaviour policies live: $DQL_POLICY_DIR or ~/.cache/dql/policies."""
    return Path(os.environ.get("DQL_POLICY_DIR", Path.home() / ".cache" / "dql" / "policies"))


def recipe_for(env: str) -> LocomotionRecipe:
    if env not in RECIPES:
        raise UserError(f"unknown locomotion env {env!r}; valid: {', '.join(RECIPES)}")
    return RECIPES[env]


# --------------------------------------------------------------------------------------------
# Behaviour policies: SB3 SAC training (resumable) and export to torch-only actor files
# --------------------------------------------------------------------------------------------


def _evaluate_sb3(model: Any, env_id: str, episodes: int) -> tuple[float, float]:
    """Mean and std return of the stochastic SB3 policy over seeded episodes."""
    env = gym.make(env_id)
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=10_000 + i)
        done, ret = False, 0.0
        while not done:
            action, _ = model.predict(obs, deterministic=False)
            obs, reward, terminated, truncated, _ = env.step(action)
            ret += float(reward)
            done = terminated or truncated
        returns.append(ret)
    env.close()
    return float(np.mean(returns)), float(np.std(returns))


def train_sac(
    env_id: str,
    out_dir: Path,
    total_steps: int,
    checkpoint_every: int = 10_000,
    eval_episodes: int = 10,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Train SB3 SAC (default hyperparameters) on `env_id`; resumable from `out_dir`.

    Every `checkpoint_every` steps it writes the actor weights (`actor_<step>.pt`), a line in
    `log.jsonl` with the stochastic policy's mean evaluation return, the full model
    (`latest.zip`) and the replay buffer (`replay_buffer.pkl`), so a rerun continues.
    """
    try:
        from stable_baselines3 import SAC
        from stable_baselines3.common.callbacks import BaseCallback
    except ImportError as e:
        raise UserError(
            "training a behaviour policy needs stable-baselines3: pip install stable-baselines3"
        ) from e

    out_dir.mkdir(parents=True, exist_ok=True)
    env = gym.make(env_id)
    latest, buffer_path = out_dir / "latest.zip", out_dir / "replay_buffer.pkl"
    if latest.exists() and buffer_path.exists():
        model = SAC.load(latest, env=env, device="cpu")
        model.load_replay_buffer(buffer_path)
        _grow_replay_buffer(model.replay_buffer, total_steps)
        print(f"resuming {env_id} SAC from step {model.num_timesteps:,}", flush=True)
    else:
        model = SAC(
            "MlpPolicy",
            env,
            buffer_size=max(total_steps, 1),  # never full: the buffer is the whole history
            seed=seed,
            device="cpu",
            verbose=0,
        )
    remaining = total_steps - model.num_timesteps
    if remaining <= 0:
        return out_dir

    class Checkpoint(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.t0 = time.time()

        def _on_step(self) -> bool:
            step = self.model.num_timesteps
            if step % checkpoint_every:
                return True
            torch.save(self.model.actor.state_dict(), out_dir / f"actor_{step}.pt")
            mean, std = _evaluate_sb3(self.model, env_id, eval_episodes)
            # Write then rename, so an interrupted save never leaves a broken checkpoint.
            self.model.save(out_dir / "latest.tmp.zip")
            self.model.save_replay_buffer(out_dir / "replay_buffer.tmp.pkl")
            (out_dir / "latest.tmp.zip").replace(latest)
            (out_dir / "replay_buffer.tmp.pkl").replace(buffer_path)
            record = {
                "step": step,
                "eval_return_mean": mean,
                "eval_return_std": std,
                "eval_episodes": eval_episodes,
                "wall_s": round(time.time() - self.t0, 1),
                "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            with open(out_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)
            return True

    model.learn(remaining, callback=Checkpoint(), reset_num_timesteps=False, progress_bar=progress)
    return out_dir


def _grow_replay_buffer(buffer: Any, size: int) -> None:
    """Enlarge a (not yet full) SB3 replay buffer to `size`, so a run resumed with a larger
    budget still keeps its whole history in order (medium-replay reads it from the start)."""
    if buffer.buffer_size >= size or buffer.full:
        return
    for name in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
        old = getattr(buffer, name, None)
        if old is None:
            continue
        grown = np.zeros((size, *old.shape[1:]), dtype=old.dtype)
        grown[: len(old)] = old
        setattr(buffer, name, grown)
    buffer.buffer_size = size


def read_training_log(run_dir: Path) -> list[dict[str, Any]]:
    """Checkpoint records of a SAC run, one per saved actor, in step order."""
    log_path = run_dir / "log.jsonl"
    if not log_path.is_file():
        raise DatasetError(f"no SAC training log at {log_path}")
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    records = [r for r in records if (run_dir / f"actor_{r['step']}.pt").is_file()]
    if not records:
        raise DatasetError(f"SAC run {run_dir} has no checkpoints yet")
    return sorted({r["step"]: r for r in records}.values(), key=lambda r: r["step"])


def select_checkpoints(
    log: list[dict[str, Any]], medium_fraction: float = 1 / 3
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(expert, medium) records: the best checkpoint, and the one before it whose evaluation
    return is closest to `medium_fraction` of the expert's."""
    expert = max(log, key=lambda r: r["eval_return_mean"])
    target = medium_fraction * expert["eval_return_mean"]
    earlier = [r for r in log if r["step"] <= expert["step"]]
    medium = min(earlier, key=lambda r: abs(r["eval_return_mean"] - target))
    return expert, medium


def export_policies(
    env: str,
    run_dir: Path,
    out_dir: Path,
    recheck_episodes: int = 20,
    candidates: int = 3,
) -> dict[str, Path]:
    """Export the expert and medium actors of a SAC run as torch-only policy files.

    The per-checkpoint evaluations are short (10 episodes), so the `candidates` best expert
    checkpoints and the `candidates` closest medium ones are re-evaluated over
    `recheck_episodes` episodes with the exported actor before choosing.
    """
    recipe = recipe_for(env)
    log = read_training_log(run_dir)
    space = gym.make(recipe.env_id).action_space
    total_steps = max(r["step"] for r in log)

    def evaluated(record: dict[str, Any], tmp: Path) -> float:
        sd = torch.load(
            run_dir / f"actor_{record['step']}.pt", map_location="cpu", weights_only=True
        )
        policy = load_policy(
            save_policy(sd, tmp, env_id=recipe.env_id, action_low=space.low, action_high=space.high)
        )
        if recheck_episodes <= 0:
            return record["eval_return_mean"]
        return mean_return(recipe.env_id, policy.act, recheck_episodes, seed=20_000)

    tmp = out_dir / f".{env}_candidate"
    expert_pool = sorted(log, key=lambda r: -r["eval_return_mean"])[:candidates]
    expert_scores = {r["step"]: evaluated(r, tmp) for r in expert_pool}
    expert = max(expert_pool, key=lambda r: expert_scores[r["step"]])
    target = recipe.medium_fraction * expert_scores[expert["step"]]
    earlier = [r for r in log if r["step"] <= expert["step"]]
    medium_pool = sorted(earlier, key=lambda r: abs(r["eval_return_mean"] - target))[:candidates]
    medium_scores = {r["step"]: evaluated(r, tmp) for r in medium_pool}
    medium = min(medium_pool, key=lambda r: abs(medium_scores[r["step"]] - target))
    for suffix in (".pt", ".json"):
        tmp.with_suffix(suffix).unlink(missing_ok=True)

    paths = {}
    for level, record, score in (
        ("expert", expert, expert_scores[expert["step"]]),
        ("medium", medium, medium_scores[medium["step"]]),
    ):
        sd = torch.load(
            run_dir / f"actor_{record['step']}.pt", map_location="cpu", weights_only=True
        )
        paths[level] = save_policy(
            sd,
            out_dir / f"{env}_{level}",
            env_id=recipe.env_id,
            action_low=space.low,
            action_high=space.high,
            extra={
                "level": level,
                "algorithm": "stable-baselines3 SAC, default hyperparameters",
                "train_step": record["step"],
                "train_total_steps": total_steps,
                "checkpoint_eval_return": record["eval_return_mean"],
                "checkpoint_eval_episodes": record["eval_episodes"],
                "recheck_return": score,
                "recheck_episodes": recheck_episodes,
                "selection": "expert: best checkpoint; medium: return closest to "
                f"{recipe.medium_fraction:.3f} x expert, at or before the expert step",
            },
        )
    return paths


def find_policy(env: str, level: str, policy_dir: Path | None) -> Path | None:
    """`<env>_<level>.pt` in `policy_dir`, else the one shipped in dql/policies, else None."""
    for directory in (policy_dir or default_policy_dir(), PACKAGED_POLICIES):
        path = directory / f"{env}_{level}.pt"
        if path.is_file() and path.with_suffix(".json").is_file():
            return path
    return None


def ensure_policy(
    env: str, level: str, policy_dir: Path | None, train_steps: int | None, progress: bool
) -> Policy:
    """The `level` ("medium" or "expert") behaviour policy of `env`.

    In order: a SAC run in `<policy_dir>/sac_<env>` (continued up to its budget, then exported
    if its export is missing or older than the run); an exported `<policy_dir>/<env>_<level>.pt`;
    the policy shipped in dql/policies; else train SAC from scratch and export.
    """
    policy_dir = policy_dir or default_policy_dir()
    run_dir = policy_dir / f"sac_{env}"
    exported = policy_dir / f"{env}_{level}.pt"
    if (run_dir / "latest.zip").is_file():
        train_behaviour_policies(env, policy_dir, train_steps, progress)
        last_step = read_training_log(run_dir)[-1]["step"]
        if not _exported_from(exported, last_step):
            export_policies(env, run_dir, policy_dir)
        return load_policy(exported)
    path = find_policy(env, level, policy_dir)
    if path is None:
        run_dir = train_behaviour_policies(env, policy_dir, train_steps, progress)
        path = export_policies(env, run_dir, policy_dir)[level]
    return load_policy(path)


def _checkpoint_step(env: str, policy_dir: Path | None) -> int | None:
    """The SAC step of the medium policy found for `env` (exported or shipped), if it has one."""
    path = find_policy(env, "medium", policy_dir)
    return json.loads(path.with_suffix(".json").read_text()).get("train_step") if path else None


def rerun_to_medium(env: str, policy_dir: Path | None, progress: bool) -> tuple[Path, Policy]:
    """The SAC run behind `env`'s medium policy, trained (again) up to the medium's level.

    SB3 SAC with its fixed seed is deterministic on one CPU and library stack, so rerunning the
    recipe to the medium's step reproduces the run's replay buffer without training on to the
    expert; the actor it saves at that step is compared with the medium's weights to confirm it.
    On another CPU or library version the run takes another path (measured: Hopper's returns at
    10k steps differ between two Xeon machines). Then, as D4RL defines medium-replay, the run
    goes on until a checkpoint's evaluation return reaches the medium's (at most the recipe's
    budget, else the closest one), and that checkpoint's own actor is the medium of the data.
    """
    recipe = recipe_for(env)
    policy_root = policy_dir or default_policy_dir()
    medium_path = find_policy(env, "medium", policy_dir)
    assert medium_path is not None
    medium = load_policy(medium_path)
    step = int(medium.meta["train_step"])
    if step % recipe.checkpoint_every:
        raise DatasetError(f"{medium_path} was saved at step {step:,}, not a checkpoint step")
    run_dir = train_behaviour_policies(env, policy_root, step, progress)
    actor = torch.load(run_dir / f"actor_{step}.pt", map_location="cpu", weights_only=True)
    shipped = torch.load(medium.path, map_location="cpu", weights_only=True)
    if set(actor) >= set(shipped) and all(torch.equal(actor[k], shipped[k]) for k in shipped):
        return run_dir, medium

    target = float(medium.meta["checkpoint_eval_return"])
    print(
        f"warning: the rerun SAC actor at step {step:,} differs from {medium_path} (another CPU "
        f"or library version); training on until a checkpoint returns {target:.0f}",
        flush=True,
    )
    while True:
        log = read_training_log(run_dir)
        reached = [r for r in log if r["eval_return_mean"] >= target]
        if reached or log[-1]["step"] >= recipe.train_steps:
            break
        train_behaviour_policies(
            env, policy_root, log[-1]["step"] + recipe.checkpoint_every, progress
        )
    record = reached[0] if reached else min(log, key=lambda r: abs(r["eval_return_mean"] - target))
    if not reached:
        print(f"warning: no checkpoint reached {target:.0f}; using the closest", flush=True)
    space = gym.make(recipe.env_id).action_space
    meta = {k: v for k, v in medium.meta.items() if k not in ("recheck_return", "recheck_episodes")}
    own = save_policy(
        torch.load(run_dir / f"actor_{record['step']}.pt", map_location="cpu", weights_only=True),
        policy_root / f"{env}_medium_rerun",
        env_id=recipe.env_id,
        action_low=space.low,
        action_high=space.high,
        extra={
            **meta,
            "train_step": record["step"],
            "train_total_steps": record["step"],
            "checkpoint_eval_return": record["eval_return_mean"],
            "selection": f"first checkpoint of a rerun whose return reaches {medium_path.name}'s",
        },
    )
    return run_dir, load_policy(own)


def _exported_from(path: Path, last_step: int) -> bool:
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        return False
    return json.loads(meta_path.read_text()).get("train_total_steps") == last_step


def train_behaviour_policies(
    env: str, policy_dir: Path, train_steps: int | None, progress: bool
) -> Path:
    """Train (or continue) SB3 SAC in `<policy_dir>/sac_<env>` up to the budget."""
    recipe = recipe_for(env)
    steps = train_steps or recipe.train_steps
    run_dir = policy_dir / f"sac_{env}"
    done = 0
    if (run_dir / "log.jsonl").is_file():
        done = max((r["step"] for r in read_training_log(run_dir)), default=0)
    if done >= steps:
        return run_dir
    print(
        f"training SB3 SAC on {recipe.env_id} to {steps:,} steps in {run_dir} "
        f"(at {done:,} now; resumable: rerun the same command to continue)",
        flush=True,
    )
    torch.set_num_threads(1)
    train_sac(
        recipe.env_id,
        run_dir,
        steps,
        checkpoint_every=recipe.checkpoint_every,
        eval_episodes=recipe.eval_episodes,
        progress=progress,
    )
    return run_dir


# --------------------------------------------------------------------------------------------
# Rollouts into Minari episode buffers
# --------------------------------------------------------------------------------------------


def replay_episodes(run_dir: Path, steps: int, action_space: gym.spaces.Box) -> list:
    """The first `steps` transitions of a SAC run's replay buffer, cut into episodes.

    An episode ends where SB3 stored done (termination unless its timeout flag is set), where the
    next stored observation does not continue it (a resumed run restarted the env), or at `steps`.
    """
    from minari.data_collector import EpisodeBuffer
    from stable_baselines3.common.save_util import load_from_pkl

    buffer = load_from_pkl(run_dir / "replay_buffer.pkl")
    available = buffer.buffer_size if buffer.full else buffer.pos
    # SB3 checkpoints at step N before storing transition N, so a buffer saved there holds N - 1.
    if steps > available + 1:
        raise DatasetError(
            f"replay buffer in {run_dir} holds {available:,} < {steps:,} transitions"
        )
    steps = min(steps, available)
    obs = buffer.observations[:steps, 0].astype(np.float64)
    next_obs = buffer.next_observations[:steps, 0].astype(np.float64)
    # SB3 stores actions rescaled to [-1, 1]; undo it.
    low, high = action_space.low, action_space.high
    actions = low + 0.5 * (buffer.actions[:steps, 0] + 1.0) * (high - low)
    rewards = buffer.rewards[:steps, 0].astype(np.float64)
    dones = buffer.dones[:steps, 0].astype(bool)
    timeouts = buffer.timeouts[:steps, 0].astype(bool)
    broken = np.zeros(steps, dtype=bool)
    broken[:-1] = np.any(next_obs[:-1] != obs[1:], axis=1) & ~dones[:-1]
    ends = np.flatnonzero(dones | broken)
    if len(ends) == 0 or ends[-1] != steps - 1:
        ends = np.append(ends, steps - 1)
    episodes, start = [], 0
    for end in ends:
        terminated = np.zeros(end + 1 - start, dtype=bool)
        truncated = np.zeros_like(terminated)
        terminated[-1] = dones[end] and not timeouts[end]
        truncated[-1] = not terminated[-1]
        episodes.append(
            EpisodeBuffer(
                observations=np.concatenate([obs[start : end + 1], next_obs[end : end + 1]]),
                actions=actions[start : end + 1].astype(action_space.dtype),
                rewards=rewards[start : end + 1],
                terminations=terminated,
                truncations=truncated,
            )
        )
        start = end + 1
    return episodes


# --------------------------------------------------------------------------------------------
# Building one dataset
# --------------------------------------------------------------------------------------------


def dataset_id(env: str, quality: str) -> str:
    return f"local/{env}/{quality}-v0"


def build_locomotion(
    env: str,
    quality: str,
    *,
    size: int = 1_000_000,
    seed: int = 0,
    dataset_id_override: str | None = None,
    policy_dir: Path | None = None,
    train_steps: int | None = None,
    ref_episodes: int = 100,
    max_episode_steps: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    portable: bool = False,
) -> BuildReport:
    """Build `local/<env>/<quality>-v0` in the Minari store and return what was written.

    `portable`: the behaviour policies act in float64, actions rounded to float32
    (`Policy.in_float64`), so the bytes do not depend on the CPU's BLAS kernels; other bytes
    than the default float32 build of the same command."""
    recipe = recipe_for(env)
    if quality not in QUALITIES:
        raise UserError(f"unknown quality {quality!r}; valid: {', '.join(QUALITIES)}")
    check_positive("--size", size)
    check_positive("--ref-episodes", ref_episodes)
    if max_episode_steps is not None:
        check_positive("--max-episode-steps", max_episode_steps)
        if quality == "medium-replay":
            raise UserError("--max-episode-steps does not apply to medium-replay (SAC's own env)")
    if train_steps is not None:
        check_positive("--train-steps", train_steps)
    if portable and quality == "medium-replay":
        raise UserError(
            "--portable does not apply to medium-replay: its data is a SAC run's replay buffer, "
            "and the training itself depends on the CPU's float32 kernels"
        )
    started = time.time()
    name = dataset_id_override or dataset_id(env, quality)
    prepare_dataset_dir(name, overwrite)
    torch.set_num_threads(1)

    eval_spec = gym.spec(recipe.env_id)
    data_kwargs = {"max_episode_steps": max_episode_steps} if max_episode_steps else {}
    data_spec = gym.make(recipe.env_id, **data_kwargs).spec
    action_space = gym.make(recipe.env_id).action_space
    random_act = uniform_policy(action_space)

    def as_built(policy: Policy) -> Policy:  # --portable: the policy computed in float64
        return policy.in_float64() if portable else policy

    def behaviour(level: str) -> Policy:
        return as_built(ensure_policy(env, level, policy_dir, train_steps, progress))

    def collect(act: ActFn, label: str) -> list:
        return collect_episodes(
            recipe.env_id, act, size, seed, max_episode_steps, progress, f"{env} {label}"
        )

    used: list[Policy] = []
    if quality == "random":
        episodes = collect(random_act, "random")
        algorithm = "uniform random actions"
        described = f"{size:,} transitions of uniformly random actions"
        expert_path = find_policy(env, "expert", policy_dir)
        expert = as_built(load_policy(expert_path)) if expert_path else None
        if expert is None:
            print(
                f"warning: no {env} expert policy in {policy_dir or default_policy_dir()} or the "
                f"package, so no reference scores; build {env}-expert first to get them",
                flush=True,
            )
    elif quality == "medium-replay" and train_steps is None and _checkpoint_step(env, policy_dir):
        run_dir, medium = rerun_to_medium(env, policy_dir, progress)
        expert_path = find_policy(env, "expert", policy_dir)
        expert = load_policy(expert_path) if expert_path else None
        step = medium.meta["train_step"]
        episodes, used = replay_episodes(run_dir, step, action_space), [medium]
        algorithm = "SB3 SAC replay buffer"
        described = (
            f"the replay buffer of the SB3 SAC run ({run_dir.name}, rerun to the medium "
            f"checkpoint) over its first {step:,} steps, up to {_describe(medium)}"
        )
    else:
        run_dir = (policy_dir or default_policy_dir()) / f"sac_{env}"
        if quality == "medium-replay" and not (run_dir / "latest.zip").is_file():
            # The buffer exists only in a SAC run: the shipped policies cannot give it.
            train_behaviour_policies(env, policy_dir or default_policy_dir(), train_steps, progress)
        expert = behaviour("expert")
        if quality == "expert":
            episodes, used = collect(expert.act, "expert"), [expert]
            algorithm = "SB3 SAC (expert checkpoint), stochastic actions"
            described = f"{size:,} transitions sampled from {_describe(expert)}"
        elif quality == "medium":
            medium = behaviour("medium")
            episodes, used = collect(medium.act, "medium"), [medium, expert]
            algorithm = "SB3 SAC (medium checkpoint), stochastic actions"
            described = f"{size:,} transitions sampled from {_describe(medium)}"
        elif quality == "medium-expert":
            medium = behaviour("medium")
            med_eps = collect(medium.act, "medium")
            episodes, used = med_eps + collect(expert.act, "expert"), [medium, expert]
            algorithm = "SB3 SAC (medium then expert checkpoint), stochastic actions"
            described = (
                f"episodes 0-{len(med_eps) - 1}: {size:,} transitions from {_describe(medium)}; "
                f"episodes {len(med_eps)}-{len(episodes) - 1}: {size:,} transitions from "
                f"{_describe(expert)} (the medium and expert datasets concatenated)"
            )
        else:  # medium-replay
            medium = ensure_policy(env, "medium", policy_dir, train_steps, progress)
            step = medium.meta["train_step"]
            episodes, used = replay_episodes(run_dir, step, action_space), [medium, expert]
            algorithm = "SB3 SAC replay buffer"
            described = (
                f"the replay buffer of the SB3 SAC run ({run_dir.name}) over its first "
                f"{step:,} steps, up to the medium checkpoint {_describe(medium)}"
            )

    ref_min = ref_max = None
    if expert is not None:
        ref_min = mean_return(eval_spec, random_act, ref_episodes)
        ref_max = mean_return(eval_spec, expert.act, ref_episodes)
        used = used if expert in used else [*used, expert]
    description = (
        f"{recipe.env_id} {quality}, built locally by dql {__version__} "
        f"(dql data build {env}-{quality}"
        + ("" if quality == "medium-replay" else f" --size {size} --seed {seed}")
        + (" --portable" if portable else "")
        + f"). Behaviour: {described}"
        + (" (policies in float64, actions rounded to float32)" if portable else "")
        + ". "
        f"Episode i resets with seed {seed} + i (medium-replay: as trained). Truncations mark "
        f"time limits and the --size cut; terminations only where the env terminated. "
        f"Reference scores over {ref_episodes} episodes (reset seeds {REF_SEED} + i) in "
        f"{recipe.env_id}: ref_min uniform random actions, ref_max the expert policy's "
        f"stochastic actions"
        + (f" ({_describe(expert)})." if expert else " (not available: no expert policy).")
        + (
            f" Policies: {', '.join(f'{p.name} sha256 {p.sha256()[:16]}' for p in used)}."
            if used
            else ""
        )
    )
    report = write_dataset(
        name,
        episodes,
        env=data_spec,
        eval_env=eval_spec,
        algorithm_name=algorithm,
        description=description,
        ref_min_score=ref_min,
        ref_max_score=ref_max,
        ref_episodes=ref_episodes,
        requirements=REQUIREMENTS,
        started=started,
    )
    for policy in used:  # the weights travel with the data, so it can be rebuilt exactly
        policy.copy_to(minari_root() / name / "behaviour_policies")
    return report


def _describe(policy: Policy) -> str:
    meta = policy.meta
    if "train_step" not in meta:
        return policy.name
    return (
        f"{policy.name} (SB3 SAC checkpoint at step {meta['train_step']:,} of "
        f"{meta['train_total_steps']:,}, return {meta.get('recheck_return', meta['checkpoint_eval_return']):.0f})"
    )
