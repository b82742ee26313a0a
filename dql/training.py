"""The training loop every algorithm shares: data, buffer, run directory, logging, evaluation,
checkpoints, resume, divergence and interrupt handling. An algorithm supplies only its config
(a subclass of `TrainConfig`) and an agent class:

    class MyAgent:
        def __init__(self, observation_dim, action_dim, max_action, config): ...
        def update(self, batch) -> dict[str, torch.Tensor]: ...   # no host sync inside
        def act(self, observations: np.ndarray) -> np.ndarray: ...   # batched
        # state_dict()/load_state_dict(): inherit dql.checkpoint.Checkpointed (every module,
        # optimiser, scheduler and generator it holds, plus the names in `extra_state`)
        # optional: setup(buffer), sample_batch(buffer, batch_size), selection_metric: str

and `train(config) = run_training(config, MyAgent)`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

import dql
from dql.buffer import Batch, ReplayBuffer
from dql.checkpoint import Checkpointed  # noqa: F401  (re-exported for algorithm files)
from dql.config_fields import (  # noqa: F401  (re-exported: the protocol's helpers)
    check_fields,
    fields_with_role,
    kind_errors,
    literal_choices,
    result_neutral_fields,
    roles,
    spec,
    upgrade_saved_fields,
)
from dql.data import (
    ObservationNormalizer,
    RewardTransform,
    load_dataset,
    resolve_ref_scores,
    task_name,
    transform_rewards,
)
from dql.errors import ConfigError, DivergenceError, UserError
from dql.evaluation import EvalResult, evaluate, make_env
from dql.runs import (
    RunDirectory,
    atomic_torch_save,
    atomic_write_json,
    git_commit,
    read_json,
    safe_torch_load,
)

# What a training checkpoint (checkpoints/last.pt) must hold to be resumed from.
CHECKPOINT_KEYS = (
    *("agent", "buffer", "torch_rng", "numpy_rng", "loop", "accum", "accum_count", "block"),
    "rising",
)


@dataclass
class TrainConfig:
    """Flags shared by every algorithm."""

    dataset: str = field(default="local/hopper/medium-v0", metadata=roles("set_by_sweep"))
    """Minari dataset id (local store, $MINARI_DATASETS_PATH), Minari dataset directory, or D4RL .hdf5 file."""
    seed: int = field(default=0, metadata=spec(">= 0", roles=("per_seed", "set_by_sweep")))
    """Seed of network init, batch sampling and the algorithm's noise."""
    steps: int = field(default=1_000_000, metadata=spec(">= 1"))
    """Gradient steps to train for."""
    batch_size: int = field(default=256, metadata=spec(">= 1"))
    """Transitions per gradient step."""
    eval_interval: int = field(default=50_000, metadata=spec(">= 1"))
    """Evaluate every this many steps (and at the last step)."""
    eval_episodes: int = field(default=10, metadata=spec(">= 1"))
    """Episodes per evaluation, run in parallel."""
    eval_seed: int = field(default=10_000, metadata=spec(">= 0"))
    """Reset seed of the first evaluation episode (the same at every evaluation)."""
    log_interval: int = field(default=1000, metadata=spec(">= 1"))
    """Log training metrics every this many steps (the only host syncs of the loop)."""
    checkpoint_interval: int = field(default=10_000, metadata=spec(">= 1"))
    """Save a resumable checkpoint every this many steps."""
    device: str = field(default="auto", metadata=roles("resumable"))
    """cpu, cuda, cuda:N, or auto (cuda when available)."""
    out_dir: str = field(default="runs", metadata=roles("resumable", "set_by_sweep"))
    """Runs go to OUT_DIR/ALGORITHM/TASK/seed_SEED unless --run-dir is given."""
    run_dir: str | None = field(
        default=None, metadata=roles("resumable", "per_seed", "set_by_sweep")
    )
    """Exact run directory (overrides --out-dir)."""
    resume: bool = field(default=False, metadata=roles("resumable", "per_seed", "set_by_sweep"))
    """Continue the run in the run directory from its last checkpoint."""
    download: bool = field(default=False, metadata=roles("resumable"))
    """Download a missing Minari dataset (needs internet)."""
    env_id: str | None = None
    """Evaluation env id, when the dataset does not name one (D4RL .hdf5 files)."""
    ref_min_score: float | None = None
    """Random-policy return for normalized scores (default: dataset metadata or D4RL table)."""
    ref_max_score: float | None = None
    """Expert return for normalized scores (default: dataset metadata or D4RL table)."""
    normalize_observations: bool = field(default=True, metadata=roles("architecture"))
    """Standardise observations with the dataset's mean and std (also at evaluation)."""
    reward_transform: RewardTransform = "none"
    """none, zscore, locomotion (1000/(max_ret-min_ret)), cql_antmaze ((r-0.5)*4), corl_antmaze (10r-5), antmaze (r-1)."""
    max_episode_steps: int | None = field(default=None, metadata=spec(">= 1"))
    """Override the evaluation env's time limit."""
    early_stop_patience: int = field(default=0, metadata=spec(">= 0"))
    """Offline model selection: stop after this many evaluation blocks in a row whose selection loss rose (0: off)."""
    keep_eval_checkpoints: bool = True
    """Save the agent's weights at every evaluation (for offline model selection)."""
    num_threads: int = field(default=0, metadata=roles("resumable"))
    """torch CPU threads (0: torch's default)."""
    progress: bool = field(default=True, metadata=roles("resumable", "per_seed", "set_by_sweep"))
    """Show progress bars."""
    save_traces: bool = field(default=True, metadata=roles("resumable"))
    """Save each evaluation's episodes (observations, actions, rewards, end reasons) to traces.npz/json."""

    def validate(self) -> None:
        """Refuse nonsensical values before any work starts: every field's declared range and
        choices (dql.config_fields). Subclasses add the checks that relate fields."""
        check_fields(self)


class Agent(Protocol):
    def update(self, batch: Batch) -> dict[str, torch.Tensor]: ...
    def act(self, observations: np.ndarray) -> np.ndarray: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


AgentFactory = Callable[[int, int, float, Any], Agent]


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM: a checkpoint was saved and the run can be resumed."""


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    if device != "cpu" and not device.startswith("cuda"):
        raise ConfigError(f"--device must be cpu, cuda, cuda:N or auto, got {device!r}")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_run_dir(config: TrainConfig, algorithm: str) -> Path:
    if config.run_dir:
        return Path(config.run_dir)
    return Path(config.out_dir) / algorithm / task_name(config.dataset) / f"seed_{config.seed}"


def config_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _check_resume_config(
    saved: dict[str, Any], current: dict[str, Any], resumable: frozenset[str]
) -> None:
    current = json.loads(json.dumps(current, default=str))  # as saved: tuples read back as lists
    changed = sorted(
        k
        for k in set(saved) | set(current)
        if k not in resumable and saved.get(k) != current.get(k)
    )
    if changed:
        detail = ", ".join(
            f"{k}: saved {saved.get(k)!r} vs now {current.get(k)!r}" for k in changed
        )
        raise ConfigError(f"cannot resume: config differs from the saved run ({detail})")


def _max_action(low: np.ndarray, high: np.ndarray) -> float:
    if not np.allclose(low, -high) or not np.allclose(high, high.flat[0]):
        raise UserError(
            f"action bounds must be symmetric and equal in every dimension, got low={low.tolist()} "
            f"high={high.tolist()}; rescale the actions to [-1, 1]"
        )
    return float(high.flat[0])


class _StopRequested(Exception):
    """Raised by the loop between two steps once Ctrl-C or SIGTERM was received."""


class _GracefulStop:
    """Ctrl-C or SIGTERM (job preemption) while training: the first one lets the current step
    finish, so that the checkpoint then saved is a consistent state (an update cut in half would
    be saved half-applied); a second one stops at once, keeping the last periodic checkpoint."""

    def __enter__(self) -> _GracefulStop:
        self.requested: str | None = None
        self.previous: dict[int, Any] = {}
        _RUNNING_LOOPS.add(self)
        if _in_main_thread():
            for name in ("SIGINT", "SIGTERM"):
                signum = getattr(signal, name, None)
                if signum is None or signal.getsignal(signum) == signal.SIG_IGN:
                    continue  # an ignored signal stays ignored (nohup, background jobs)
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        # os.write, not print: the handler may interrupt a print (tqdm) and io is not reentrant
        message = f"\n{self.requested}: stopping after this step to checkpoint (again: at once)\n"
        try:
            os.write(2, message.encode())
        except OSError:
            pass

    def __exit__(self, *exc: Any) -> None:
        _RUNNING_LOOPS.discard(self)
        for signum, handler in self.previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


_RUNNING_LOOPS: set[_GracefulStop] = set()


def request_stop(reason: str = "SIGTERM") -> None:
    """Ask every training loop running in this process, in any thread, to stop after its
    current step and checkpoint, as a first Ctrl-C does for the main thread's loop (loops in
    other threads see no signals: dql.batched_seeds forwards them this way)."""
    for loop in list(_RUNNING_LOOPS):
        if loop.requested is None:
            loop.requested = reason


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def run_training(config: TrainConfig, agent_cls: AgentFactory, algorithm: str) -> dict[str, Any]:
    """Train `agent_cls` as configured; return the contents of result.json.

    The story: open the run directory (refusing a config that differs from the one saved), load
    the data and build the agent, continue from the checkpoint if there is one, then step:
    update, log every `log_interval`, evaluate every `eval_interval`, checkpoint every
    `checkpoint_interval`. However the loop ends, `_end_of_run` says so in status.json."""
    config.validate()
    device = resolve_device(config.device)
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    run = RunDirectory(default_run_dir(config, algorithm))
    current = config_dict(config)
    saved_run = _open_run_directory(run, config, current)
    if run.is_complete():
        return run.result()

    seed_everything(config.seed)
    info, normalizer, ref_scores, buffer, agent = _data_and_agent(
        config, agent_cls, device, saved_run
    )
    sample = getattr(agent, "sample_batch", None) or (lambda buf, n: buf.sample(n))

    loop = _LoopState()
    output = _Output(run, config, algorithm)
    log = _MetricsLog(run, output)
    evaluations = _Evaluations(
        run, config, algorithm, agent, info, normalizer, ref_scores, current, loop, output,
        selection_metric=getattr(agent, "selection_metric", None),
    )  # fmt: skip
    checkpoints = _Checkpoints(run, agent, buffer, device, loop, log, evaluations)
    if config.resume and run.checkpoint_path.exists():
        checkpoints.restore()
    else:
        for name in ("metrics", "eval"):
            (run.path / f"{name}.jsonl").unlink(missing_ok=True)
    _write_run_config(run, algorithm, config, current, info, ref_scores, normalizer, device)
    run.set_status("running", step=loop.step)

    step = loop.step
    output.open(step)
    loop.started = time.perf_counter() - loop.wall_time
    try:
        with _GracefulStop() as stop:
            while step < config.steps:
                log.add(agent.update(sample(buffer, config.batch_size)))
                step += 1
                last = step == config.steps
                if step % config.log_interval == 0 or last:
                    output.bar.set_postfix(log.flush(step))
                if step % config.eval_interval == 0 or last:
                    checkpoints.check_health(step)
                    if evaluations.evaluate(step, log.take_block()):
                        break  # early stop: the selection metric kept rising
                if step % config.checkpoint_interval == 0 or last:
                    checkpoints.save(step)
                output.bar.update(1)
                if stop.requested:
                    checkpoints.check_health(step)  # never save a diverged state over a good one
                    raise _StopRequested(stop.requested)
    except BaseException as exc:
        ending = _end_of_run(exc, run, step, checkpoints)
        if ending is exc:
            raise
        raise ending from None
    finally:
        output.close()
    run.write_csv("metrics")
    run.write_csv("eval")
    result = summarize(run, algorithm, config)
    atomic_write_json(run.path / "result.json", result)
    run.set_status("complete", step=step)
    return result


def _data_and_agent(
    config: TrainConfig, agent_cls: AgentFactory, device: str, saved_run: dict[str, Any] | None
) -> tuple[Any, ObservationNormalizer, tuple[float, float], ReplayBuffer, Agent]:
    """The dataset (the one a resumed run started with), its buffer and normaliser, the agent."""
    data = load_dataset(config.dataset, download=config.download, env_id=config.env_id)
    info = data.info
    saved_hash = (saved_run or {}).get("dataset", {}).get("content_hash")
    if config.resume and saved_hash and saved_hash != info.content_hash:
        raise ConfigError(
            f"cannot resume: the dataset {config.dataset!r} changed since the run started "
            f"(content hash {saved_hash} then, {info.content_hash} now)"
        )
    ref_scores = resolve_ref_scores(info, config.ref_min_score, config.ref_max_score)
    make_env(info, config.env_id).close()  # fail now, not after hours, if the env is wrong
    normalizer = (
        ObservationNormalizer.from_data(data.observations)
        if config.normalize_observations
        else ObservationNormalizer.identity(info.observation_dim)
    )
    rewards = transform_rewards(data, config.reward_transform)
    buffer = ReplayBuffer(
        data, device=device, seed=config.seed, normalizer=normalizer, rewards=rewards
    )
    del data
    max_action = _max_action(info.action_low, info.action_high)
    agent = agent_cls(
        info.observation_dim,
        info.action_dim,
        max_action,
        dataclasses.replace(config, device=device),
    )
    if hasattr(agent, "setup"):
        agent.setup(buffer)
    return info, normalizer, ref_scores, buffer, agent


def _open_run_directory(
    run: RunDirectory, config: TrainConfig, current: dict[str, Any]
) -> dict[str, Any] | None:
    """The run's saved config.json, if it has one that this config may continue."""
    saved_run: dict[str, Any] | None = None
    if (run.path / "config.json").exists():
        try:
            saved_run = read_json(run.path / "config.json")
            saved_config = upgrade_saved_fields(type(config), saved_run["config"])
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(
                f"{run.path / 'config.json'} is not a run's config ({type(exc).__name__}: {exc}); "
                "choose another --run-dir"
            ) from None
        if not config.resume:
            raise UserError(
                f"run directory {run.path} already holds a run; pass --resume to continue it "
                "or choose another --out-dir/--run-dir"
            )
        _check_resume_config(saved_config, current, fields_with_role(type(config), "resumable"))
        if run.is_complete():
            return saved_run
    run.ensure_writable()
    return saved_run


def _write_run_config(
    run: RunDirectory,
    algorithm: str,
    config: TrainConfig,
    current: dict[str, Any],
    info: Any,
    ref_scores: tuple[float, float],
    normalizer: ObservationNormalizer,
    device: str,
) -> None:
    atomic_write_json(
        run.path / "config.json",
        {
            "algorithm": algorithm,
            "config": current,
            "seed": config.seed,
            "package_version": dql.__version__,
            "torch_version": torch.__version__,
            "git_commit": git_commit(),
            "dataset": info.to_dict(),
            "ref_scores": list(ref_scores),
            "normalizer": normalizer.state_dict(),
            "device": device,
        },
    )


@dataclass
class _LoopState:
    """What the loop carries between steps, saved in every checkpoint as "loop"."""

    step: int = 0
    best_score: float = -math.inf
    best_step: int | None = None
    wall_time: float = 0.0
    started: float = 0.0  # perf_counter at step 0, as if the run had never stopped

    def saved(self, step: int) -> dict[str, Any]:
        self.wall_time = time.perf_counter() - self.started
        return {"step": step, "best_score": self.best_score, "best_step": self.best_step,
                "wall_time": self.wall_time}  # fmt: skip

    def load(self, saved: dict[str, Any]) -> None:
        self.step, self.best_score = saved["step"], saved["best_score"]
        self.best_step, self.wall_time = saved["best_step"], saved["wall_time"]


class _Output:
    """What a run shows while it trains: TensorBoard scalars and the progress bar. The loop's
    parts get it when they are built; it opens at the step training starts from, which is known
    only once a checkpoint has been restored."""

    def __init__(self, run: RunDirectory, config: TrainConfig, algorithm: str) -> None:
        self.run, self.config, self.algorithm = run, config, algorithm
        self.writer: Any = None
        self.bar: Any = None

    def open(self, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        c = self.config
        self.writer = SummaryWriter(str(self.run.path / "tb"), purge_step=step or None)
        self.bar = tqdm(
            total=c.steps,
            initial=step,
            desc=f"{self.algorithm} {task_name(c.dataset)} seed {c.seed}",
            unit="step",
            disable=None if c.progress else True,
            dynamic_ncols=True,
        )

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def say(self, text: str) -> None:
        self.bar.write(text)

    def close(self) -> None:
        for part in (self.bar, self.writer):
            if part is not None:
                part.close()


class _MetricsLog:
    """Training metrics, summed on the device between logs (no host sync in a step), averaged,
    checked finite and written every `log_interval`; the logged values since the last
    evaluation (`block`) give the offline selection metric."""

    def __init__(self, run: RunDirectory, output: _Output) -> None:
        self.run, self.output = run, output
        self.accum: dict[str, torch.Tensor] = {}
        self.count = 0
        self.block: dict[str, list[float]] = {}

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for k, v in metrics.items():
            v = v.detach().float()
            self.accum[k] = self.accum[k] + v if k in self.accum else v
        self.count += 1

    def flush(self, step: int) -> dict[str, str]:
        """Write the averages since the last flush; return the first three for the progress bar."""
        names = list(self.accum)
        means = (torch.stack([self.accum[k] for k in names]) / self.count).tolist()
        values = dict(zip(names, means))
        self.accum, self.count = {}, 0
        _check_finite(values, step)
        for k, v in values.items():
            self.output.scalar(f"train/{k}", v, step)
            self.block.setdefault(k, []).append(v)
        self.run.append_row("metrics", {"step": step, **values})
        return {k: f"{v:.3g}" for k, v in list(values.items())[:3]}

    def check_pending_finite(self, step: int) -> None:
        if self.accum:
            pending = torch.stack(list(self.accum.values())).tolist()
            _check_finite(dict(zip(self.accum, pending)), step)

    def take_block(self) -> dict[str, list[float]]:
        block, self.block = self.block, {}
        return block


class _Evaluations:
    """Evaluate the agent, log the row (score, return, selection loss, episodes), keep the best,
    and say when the selection metric has risen `early_stop_patience` blocks in a row."""

    def __init__(
        self,
        run: RunDirectory,
        config: TrainConfig,
        algorithm: str,
        agent: Agent,
        info: Any,
        normalizer: ObservationNormalizer,
        ref_scores: tuple[float, float],
        current: dict[str, Any],
        loop: _LoopState,
        output: _Output,
        selection_metric: str | None,
    ) -> None:
        self.run, self.config, self.algorithm, self.agent = run, config, algorithm, agent
        self.info, self.normalizer, self.ref_scores = info, normalizer, ref_scores
        self.current, self.loop, self.selection_metric = current, loop, selection_metric
        self.output, self.rising = output, 0

    def _evaluate(self) -> EvalResult:
        c = self.config
        with torch.random.fork_rng(devices=[]):  # the training RNG stream does not see it
            torch.manual_seed(c.eval_seed)
            return evaluate(
                self.agent.act,
                self.info,
                num_episodes=c.eval_episodes,
                seed=c.eval_seed,
                normalizer=self.normalizer,
                ref_scores=self.ref_scores,
                env_id=c.env_id,
                max_episode_steps=c.max_episode_steps,
                progress=c.progress,
                record_traces=c.save_traces,
                policy_name=self.algorithm,
            )

    def evaluate(self, step: int, block: dict[str, list[float]]) -> bool:
        """One evaluation at `step`; True to stop early."""
        c, run, metric = self.config, self.run, self.selection_metric
        result = self._evaluate()
        score = float(result.normalized_score)
        selection = float(np.mean(block[metric])) if metric and block.get(metric) else None
        previous = [r for r in run.rows("eval") if r.get("selection_loss") is not None]
        if selection is not None and previous:
            self.rising = self.rising + 1 if selection > previous[-1]["selection_loss"] else 0
        self.loop.wall_time = time.perf_counter() - self.loop.started
        run.append_row(
            "eval",
            {
                "step": step,
                "normalized_score": score,
                "return": result.mean_return,
                "selection_loss": selection,
                "wall_time": self.loop.wall_time,
                "episodes": result.episodes(),
            },
        )
        if c.save_traces:  # overwritten each time: the last is the final one
            from dql.traces import save_traces

            save_traces(
                run.path,
                result,
                info=self.info,
                env_id=c.env_id,
                max_episode_steps=c.max_episode_steps,
                metadata={"algorithm": self.algorithm, "step": step, "config": self.current},
            )
        self.output.scalar("eval/normalized_score", score, step)
        self.output.scalar("eval/return", result.mean_return, step)
        if c.keep_eval_checkpoints:
            atomic_torch_save(self.agent.state_dict(), run.path / f"checkpoints/eval_{step}.pt")
        if score > self.loop.best_score:
            self.loop.best_score, self.loop.best_step = score, step
        self.output.say(
            f"step {step}: normalized score {score:.1f} (return {result.mean_return:.1f})"
        )
        if c.early_stop_patience and self.rising >= c.early_stop_patience:
            self.output.say(
                f"early stop at step {step}: {metric} rose {self.rising} blocks in a row"
            )
            return True
        return False


class _Checkpoints:
    """checkpoints/last.pt: the agent, the buffer's sampler, every RNG and the loop's own state,
    so that a resumed run continues bit for bit; never saved over with non-finite values."""

    def __init__(
        self,
        run: RunDirectory,
        agent: Agent,
        buffer: ReplayBuffer,
        device: str,
        loop: _LoopState,
        log: _MetricsLog,
        evaluations: _Evaluations,
    ) -> None:
        self.run, self.agent, self.buffer, self.device = run, agent, buffer, device
        self.loop, self.log, self.evaluations = loop, log, evaluations

    def check_health(self, step: int) -> None:
        """Before an evaluation or a checkpoint: the metrics not yet logged and every tensor of the
        agent are finite, so a NaN is never evaluated nor saved over the last good checkpoint."""
        self.log.check_pending_finite(step)
        bad = _non_finite_tensors(self.agent.state_dict())
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise DivergenceError(
                f"non-finite values in the agent's {', '.join(bad[:3])}{more} at step {step}"
            )

    def save(self, step: int, checked: bool = False) -> None:
        if not checked:
            self.check_health(step)
        cuda = {"cuda_rng": torch.cuda.get_rng_state()} if self.device.startswith("cuda") else {}
        atomic_torch_save(
            {
                "agent": self.agent.state_dict(),
                "buffer": self.buffer.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "numpy_rng": _numpy_state_to_tensors(np.random.get_state()),
                "python_rng": _python_state_to_tensors(random.getstate()),
                **cuda,
                "loop": self.loop.saved(step),
                "accum": self.log.accum,
                "accum_count": self.log.count,
                "block": self.log.block,
                "rising": self.evaluations.rising,
            },
            self.run.checkpoint_path,
        )

    def restore(self) -> None:
        path = self.run.checkpoint_path
        ckpt = safe_torch_load(path, map_location=self.device)
        missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
        if missing:
            raise UserError(
                f"{path} is not a training checkpoint (no {', '.join(missing)}); "
                "remove it to start the run over"
            )
        self.agent.load_state_dict(ckpt["agent"])
        self.buffer.load_state_dict(ckpt["buffer"])
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        np.random.set_state(_numpy_state(ckpt["numpy_rng"]))
        if "python_rng" in ckpt:
            random.setstate(_python_state(ckpt["python_rng"]))
        if self.device.startswith("cuda") and "cuda_rng" in ckpt:
            torch.cuda.set_rng_state(ckpt["cuda_rng"].cpu())
        self.loop.load(ckpt["loop"])
        self.log.accum, self.log.count = dict(ckpt["accum"]), ckpt["accum_count"]
        self.log.block = {k: list(v) for k, v in ckpt["block"].items()}
        self.evaluations.rising = ckpt["rising"]
        self.run.truncate_rows("metrics", self.loop.step)
        self.run.truncate_rows("eval", self.loop.step)


def _end_of_run(
    exc: BaseException, run: RunDirectory, step: int, checkpoints: _Checkpoints
) -> BaseException:
    """The one cleanup path: record how the loop ended; return the exception to raise."""
    if isinstance(exc, _StopRequested):  # between two steps: a consistent state, saved now
        checkpoints.save(step, checked=True)
        run.set_status("interrupted", step=step)
        return TrainingInterrupted(
            f"{exc.args[0]} at step {step}: checkpoint saved in {run.checkpoint_path}; "
            "run the same command with --resume to continue"
        )
    if isinstance(exc, KeyboardInterrupt):  # a second signal, maybe mid-update: keep the last
        run.set_status("interrupted", step=step)
        how = (
            f"--resume continues from the last checkpoint, {run.checkpoint_path}"
            if run.checkpoint_path.exists()
            else "no checkpoint was saved yet, so --resume starts over"
        )
        return TrainingInterrupted(f"interrupted during step {step + 1}; {how}")
    if isinstance(exc, DivergenceError):
        run.set_status("failed", step=step, error=f"diverged: {exc}")
        kept = (
            f"the last good checkpoint is {run.checkpoint_path}"
            if run.checkpoint_path.exists()
            else "no checkpoint was saved before it"
        )
        return DivergenceError(f"{exc}; the run is marked failed, {kept}")
    run.set_status("failed", step=step, error=f"{type(exc).__name__}: {exc}")
    return exc


def _check_finite(values: dict[str, float], step: int) -> None:
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        raise DivergenceError(f"non-finite {', '.join(bad)} at step {step}")


def summarize(run: RunDirectory, algorithm: str, config: TrainConfig) -> dict[str, Any]:
    """Final, best (online) and offline-selected scores of a run, from its eval rows."""
    evals = run.rows("eval")
    final, best = evals[-1], max(evals, key=lambda r: r["normalized_score"])
    with_loss = [r for r in evals if r.get("selection_loss") is not None]
    selected = min(with_loss, key=lambda r: r["selection_loss"]) if with_loss else None
    return {
        "algorithm": algorithm,
        "dataset": config.dataset,
        "seed": config.seed,
        "steps": final["step"],
        "final_score": final["normalized_score"],
        "final_return": final["return"],
        "best_score": best["normalized_score"],
        "best_step": best["step"],
        "selected_step": selected["step"] if selected else None,
        "selected_score": selected["normalized_score"] if selected else None,
        "wall_time": final["wall_time"],
        "eval_episodes": config.eval_episodes,
    }


def _numpy_state_to_tensors(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {
        "keys": torch.as_tensor(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def _numpy_state(saved: dict[str, Any]) -> tuple:
    keys = saved["keys"].cpu().numpy().astype(np.uint32)
    return ("MT19937", keys, saved["pos"], saved["has_gauss"], saved["cached"])


def _python_state_to_tensors(state: tuple) -> dict[str, Any]:
    version, internal, gauss = state
    internal_tensor = torch.tensor(internal, dtype=torch.int64)
    return {"version": version, "internal": internal_tensor, "gauss": gauss}


def _python_state(saved: dict[str, Any]) -> tuple:
    return (saved["version"], tuple(int(x) for x in saved["internal"].tolist()), saved["gauss"])


def _non_finite_tensors(tree: Any, prefix: str = "") -> list[str]:
    """Key paths of floating-point tensors in a (nested) state dict holding NaN or inf."""
    found: list[tuple[str, torch.Tensor]] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, torch.Tensor):
            if node.is_floating_point() and node.numel():
                found.append((path, torch.isfinite(node).all()))
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f"{path}.{i}" if path else str(i))

    walk(tree, prefix)
    if not found:
        return []
    device = found[0][1].device
    finite = torch.stack([ok.to(device) for _, ok in found]).tolist()  # one sync for all
    return [path for (path, _), ok in zip(found, finite) if not ok]


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, TrainingInterrupted):
        return 130
    if isinstance(exc, DivergenceError):
        return 3
    return 2


def stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


__all__ = [
    "TrainConfig",
    "Agent",
    "run_training",
    "TrainingInterrupted",
    "resolve_device",
    "seed_everything",
    "default_run_dir",
    "exit_code_for",
    "stderr",
]
