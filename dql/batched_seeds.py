"""Several seeds of one algorithm trained as one batched model, each into a normal run directory.

    results = train_batched_seeds(config, seeds=[0, 1, 2, 3, 4])   # result.json of each seed

Why: an MLP step at batch 256 leaves a CPU (or a GPU) partly idle between small kernels; S
seeds stacked into (S, ...) weights run as batched matmuls of S times the work per kernel.

How: one `dql.training.run_training` per seed, each in its own thread and exactly as a separate
run (its data and replay buffer sampled by the seed's generator, logging, evaluation,
checkpoints, resume, divergence and early-stopping handling, latency) except that its agent is
a *view* of one batched agent (`Agent(..., seeds=[...])`, see dql.diffusion_ql). A view's
`update(batch)` hands its batch over and waits; once every running seed has handed one in, the
main thread stacks them to (S, B, ...), takes one batched step and gives each view its seed's
metrics. The loops advance in lockstep, and what they write is what S separate runs write:
tables, resumption, export and evaluation tools work unchanged, and a batched seed's checkpoint
loads into a normal agent (and the other way round).

- Acting (evaluation, latency) uses a snapshot of the seed as a normal agent, refreshed after
  training moved on, with its own generator reseeded at every evaluation as the loop reseeds
  torch's global RNG (threads cannot share that one).
- A seed that stops (diverged, early-stopped, failed) leaves; the others go on.
- Ctrl-C / SIGTERM: every seed finishes the same step and checkpoints; a second one stops at once.
- Seeds resumed together must stand at the same step (they do if they were trained together);
  `run_batched` trains groups of equal steps one after another, and skips complete runs.

An algorithm takes part when its agent class accepts `seeds=` and has `seed_state_dict(k)`,
`load_seed_state_dict(k, state)` and `act(observations, generator)` (today: Diffusion-QL).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dql.errors import ConfigError, UserError
from dql.training import TrainConfig, default_run_dir, request_stop, run_training

# Config fields that may differ between the seeds of one batched group.
PER_SEED_FIELDS = {"seed", "run_dir", "resume", "progress"}


def supports_batched_seeds(agent_cls: type) -> bool:
    """Whether `agent_cls` can train several seeds as one model."""
    import inspect

    methods = ("seed_state_dict", "load_seed_state_dict")
    try:
        takes_seeds = "seeds" in inspect.signature(agent_cls).parameters
    except (TypeError, ValueError):
        return False
    return takes_seeds and all(callable(getattr(agent_cls, m, None)) for m in methods)


def algorithm_of(config: TrainConfig) -> tuple[type, str]:
    """The agent class and algorithm name of a config (its Config's module)."""
    from dql.export import find_agent_class

    module = importlib.import_module(type(config).__module__)
    return find_agent_class(module), module.ALGORITHM


def train_batched_seeds(
    config: TrainConfig, seeds: Sequence[int], run_dirs: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Train `seeds` of `config`'s algorithm as one batched model. Each seed writes the run
    directory a normal run with that seed would (or `run_dirs[k]`); returns each seed's
    result.json contents, in order. Raises the first seed's error once all have stopped."""
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ConfigError(f"seeds must be distinct and non-empty, got {list(seeds)}")
    if run_dirs is not None and len(run_dirs) != len(seeds):
        raise ConfigError("run_dirs must name one directory per seed")
    if config.run_dir and run_dirs is None:
        raise ConfigError("--run-dir names one run; give one run directory per seed (run_dirs)")
    configs = [
        dataclasses.replace(
            config, seed=int(seed), run_dir=None if run_dirs is None else str(run_dirs[k])
        )
        for k, seed in enumerate(seeds)
    ]
    outcomes = run_batched(configs)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return outcomes  # type: ignore[return-value]


def run_batched(configs: Sequence[TrainConfig]) -> list[dict[str, Any] | BaseException]:
    """Train runs that differ only in seed (and run directory, resume) as batched groups: one
    group per resume step. Returns per run its result dict or the exception it ended with."""
    if not configs:
        return []
    first = dataclasses.asdict(configs[0])
    for config in configs[1:]:
        if type(config) is not type(configs[0]):
            raise ConfigError("batched seeds must all be runs of one algorithm")
        differ = {
            k
            for k, v in dataclasses.asdict(config).items()
            if k not in PER_SEED_FIELDS and first[k] != v
        }
        if differ:
            raise ConfigError(f"batched seeds may differ only in seed; these differ: {differ}")
    agent_cls, algorithm = algorithm_of(configs[0])
    if not supports_batched_seeds(agent_cls):
        raise UserError(f"{algorithm} cannot train seeds batched; run them one by one")
    groups: dict[int, list[int]] = {}
    for index, config in enumerate(configs):
        groups.setdefault(_resume_step(config, algorithm), []).append(index)
    outcomes: list[Any] = [None] * len(configs)
    for indices in groups.values():
        group = _Lockstep([configs[i] for i in indices], agent_cls, algorithm)
        for i, outcome in zip(indices, group.run()):
            outcomes[i] = outcome
    return outcomes


def _resume_step(config: TrainConfig, algorithm: str) -> int:
    """The step a run continues from: its checkpoint's, or 0 (a run that is complete or
    starts fresh; run_training itself decides what happens to it)."""
    from dql.runs import RunDirectory, safe_torch_load

    run = RunDirectory(default_run_dir(config, algorithm))
    if not config.resume or run.is_complete() or not run.checkpoint_path.exists():
        return 0
    try:
        return int(safe_torch_load(run.checkpoint_path, map_location="cpu")["loop"]["step"])
    except Exception:  # unreadable: run_training reports it for that run
        return -1


class _SeedView:
    """Seed k of the batched agent as a normal agent for `run_training`."""

    def __init__(self, group: _Lockstep, index: int, config: TrainConfig) -> None:
        self.group, self.index, self.config = group, index, config
        self.device = group.agent.device
        self.selection_metric = getattr(group.agent, "selection_metric", None)
        self._snapshot: Any = None  # seed k as a normal agent, for acting
        self._stale = True
        self._generator = torch.Generator(device=self.device)

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self._stale = True
        return self.group.step(self.index, batch)

    @torch.no_grad()
    def act(self, observations: np.ndarray) -> np.ndarray:
        if self._stale:  # the first call since training moved on: an evaluation begins
            if self._snapshot is None:
                self._snapshot = self.group.single_agent(self.config)
            self._snapshot.load_state_dict(self.state_dict())
            self._generator.manual_seed(self.config.eval_seed)  # as the loop seeds torch's RNG
            self._stale = False
        return self._snapshot.act(observations, generator=self._generator)

    def state_dict(self) -> dict[str, Any]:
        return self.group.agent.seed_state_dict(self.index)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.group.agent.load_seed_state_dict(self.index, state)
        self._stale = True


class _Lockstep:
    """The batched agent of one group of seeds, the threads that train them, and the
    rendezvous where the main thread takes one batched step for all of them."""

    def __init__(self, configs: list[TrainConfig], agent_cls: type, algorithm: str) -> None:
        self.configs, self.agent_cls, self.algorithm = configs, agent_cls, algorithm
        self.agent: Any = None
        self.condition = threading.Condition()
        self.state = ["waiting"] * len(configs)  # -> "starting" -> "joined" -> "left"
        self.batches: dict[int, dict[str, torch.Tensor]] = {}
        self.last_batch: dict[int, dict[str, torch.Tensor]] = {}
        self.results: dict[int, dict[str, torch.Tensor]] = {}
        self.failure: BaseException | None = None
        self.stop_reason: str | None = None
        self.dims: tuple[int, int, float] | None = None

    # ------------------------------------------------------------------ worker threads

    def factory(self, index: int):  # noqa: ANN201 (an AgentFactory)
        def make(observation_dim: int, action_dim: int, max_action: float, config: Any) -> Any:
            with self.condition:
                if self.state[index] == "joined":  # run_training rebuilding on another device
                    return self.agent_cls(observation_dim, action_dim, max_action, config)
                if self.agent is None:
                    self.dims = (observation_dim, action_dim, max_action)
                    seeds = [c.seed for c in self.configs]
                    self.agent = self.agent_cls(
                        observation_dim, action_dim, max_action, config, seeds=seeds
                    )
                elif self.dims != (observation_dim, action_dim, max_action):
                    raise UserError("batched seeds must train on the same dataset")
                self.state[index] = "joined"
                self.condition.notify_all()
                return _SeedView(self, index, config)

        return make

    def single_agent(self, config: TrainConfig) -> Any:
        assert self.dims is not None
        eager = {"compile": False} if hasattr(config, "compile") else {}  # it only acts
        return self.agent_cls(*self.dims, dataclasses.replace(config, **eager))

    def step(self, index: int, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with self.condition:
            self.batches[index] = batch
            self.condition.notify_all()
            self.condition.wait_for(lambda: index in self.results or self.failure is not None)
            if index in self.results:
                return self.results.pop(index)
            if isinstance(self.failure, KeyboardInterrupt):
                raise KeyboardInterrupt
            raise RuntimeError(f"the batched step failed: {self.failure!r}") from self.failure

    def _train(self, index: int, outcomes: list[Any]) -> None:
        try:
            outcomes[index] = run_training(self.configs[index], self.factory(index), self.algorithm)
        except BaseException as exc:  # recorded per seed; the other seeds go on
            outcomes[index] = exc
        finally:
            with self.condition:
                self.state[index] = "left"
                self.condition.notify_all()

    # ------------------------------------------------------------------ the main thread

    def run(self) -> list[Any]:
        outcomes: list[Any] = [None] * len(self.configs)
        threads = [
            threading.Thread(target=self._train, args=(i, outcomes), daemon=True)
            for i in range(len(self.configs))
        ]
        previous = self._forward_signals()
        try:
            for index, thread in enumerate(threads):  # one at a time: set-up is not thread-safe
                self.state[index] = "starting"
                thread.start()
                with self.condition:
                    self.condition.wait_for(lambda i=index: self.state[i] != "starting")
            self._serve()
        finally:
            self._restore_signals(previous)
            for thread in threads:
                thread.join()
        return outcomes

    def _ready(self) -> bool:
        members = [i for i, s in enumerate(self.state) if s == "joined"]
        waiting_to_start = any(s in ("waiting", "starting") for s in self.state)
        return bool(members) and not waiting_to_start and all(i in self.batches for i in members)

    def _serve(self) -> None:
        """Take a batched step whenever every running seed has handed in a batch."""
        while True:
            with self.condition:
                self.condition.wait_for(
                    lambda: self._ready() or all(s == "left" for s in self.state), timeout=1.0
                )
                if all(s == "left" for s in self.state):
                    return
                if not self._ready():
                    continue
                if self.stop_reason is not None:  # every seed stops after this same step
                    request_stop(self.stop_reason)
                batches = dict(self.batches)
                self.batches.clear()
            self.last_batch.update(batches)
            stacked = self._stack(batches)
            try:
                metrics = self.agent.update(stacked)
            except BaseException as exc:
                with self.condition:
                    self.failure = exc
                    self.condition.notify_all()
                if isinstance(exc, KeyboardInterrupt):
                    continue  # the seeds record it; wait for them to leave
                raise
            with self.condition:
                for index in batches:
                    self.results[index] = {k: v[index] for k, v in metrics.items()}
                self.condition.notify_all()

    def _stack(self, batches: dict[int, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """(S, B, ...): a seed that left (or never joined) gets a stand-in batch; its slot of
        the model computes on, unread."""
        any_batch = next(iter(batches.values()))
        rows = [
            batches.get(i) or self.last_batch.get(i) or any_batch for i in range(len(self.state))
        ]
        return {k: torch.stack([r[k] for r in rows]) for k in any_batch}

    def _forward_signals(self) -> dict[int, Any]:
        """Ctrl-C / SIGTERM: all seeds stop after the same step; a second one at once."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handle(signum: int, frame: Any) -> None:
            name = signal.Signals(signum).name
            if self.stop_reason is not None:
                with self.condition:
                    self.failure = KeyboardInterrupt()
                    self.condition.notify_all()
                return
            self.stop_reason = name
            message = (
                f"\n{name}: all seeds stop after the next step to checkpoint (again: at once)\n"
            )
            try:  # os.write, not print: a handler may interrupt a print
                os.write(2, message.encode())
            except OSError:
                pass

        previous = {}
        for name in ("SIGINT", "SIGTERM"):
            signum = getattr(signal, name, None)
            if signum is not None and signal.getsignal(signum) != signal.SIG_IGN:
                previous[signum] = signal.signal(signum, handle)
        return previous

    @staticmethod
    def _restore_signals(previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def run_dirs_for(
    out_dir: str | Path, algorithm: str, dataset: str, seeds: Sequence[int]
) -> list[str]:
    """OUT/ALGORITHM/TASK/seed_N for each seed (the layout of normal runs)."""
    from dql.data import task_name

    return [str(Path(out_dir) / algorithm / task_name(dataset) / f"seed_{s}") for s in seeds]
