"""Several seeds of one algorithm trained as one batched model, each into a normal run directory.

    results = train_batched_seeds(config, seeds=[0, 1, 2, 3, 4])   # result.json of each seed

Why: an MLP step at batch 256 leaves a GPU mostly idle between small kernels; S seeds stacked
into (S, ...) weights run as batched matmuls of S times the work per kernel. (On a CPU core the
small matmuls already run near its rate: measured here, 5 batched seeds cost about 5 seeds' time.)

How: one `dql.training.run_training` per seed, each in its own thread and exactly as a separate
run (its data and replay buffer sampled by the seed's generator, logging, evaluation,
checkpoints, resume, divergence and early-stopping handling, latency) except that its agent is
a *view* of one batched agent (a `SeedStack`). A view's
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

How an algorithm takes part (`SeedStack`; every algorithm but the planners): the algorithm
file is written for one seed and marks with `@per_seed` the methods that hold its maths (losses,
targets, metrics: functions of a batch and the agent's networks). The stack builds S normal
agents, each as a run seeded s_k builds it, and turns the first into all of them: every
parameter and buffer becomes (S, ...) (optimizers, schedulers and Polyak updates work on them
unchanged, being elementwise), and a `@per_seed` call runs as `torch.func.vmap` of
`functional_call` over the seed dimension. The update's choreography (zero_grad, backward, step)
runs once for all seeds: a loss comes back as (S,), so the algorithm writes
`loss.sum().backward()` (seeds share no weight, so each gets its own gradient; for one seed the
sum is the loss itself); `clip_grad_norm_` clips each seed's gradient by its own norm.
Noise:
- drawn inside a `@per_seed` method, it comes from one generator of the stack (vmap's
  `randomness="different"`): seed k is then a run seeded k in distribution;
- drawn by a `@per_seed_noise` method (every random number of an update, drawn before the
  losses, as Diffusion-QL does), it comes from seed k's own stream, which starts where a run
  seeded k's torch RNG stands after its agent is built: seed k then draws exactly the noise of
  a normal run seeded k and equals it up to the rounding of batched matmuls.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import os
import random
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from dql.errors import ConfigError, UserError
from dql.training import (
    TrainConfig,
    default_run_dir,
    fields_with_role,
    request_stop,
    run_training,
    seed_everything,
)

F = TypeVar("F", bound=Callable[..., Any])


def per_seed(method: F) -> F:
    """Mark an agent method whose maths is one seed's: a function of its tensor arguments and
    the agent's networks. In a `SeedStack` it maps over the seed dimension; otherwise it is the
    plain call."""

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        stack = self.__dict__.get("_seed_stack")
        if stack is None:
            return method(self, *args, **kwargs)
        return stack.map_seeds(method, args, kwargs)

    call.__per_seed__ = True  # type: ignore[attr-defined]
    return call  # type: ignore[return-value]


def per_seed_noise(method: F) -> F:
    """Mark an agent method that draws random numbers from torch's RNG for an update and does
    nothing else (its outputs: tensors, or None, in lists, tuples and dicts). In a `SeedStack`
    it runs once per seed from that seed's own RNG stream and its outputs are stacked (S, ...);
    otherwise it is the plain call."""

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        stack = self.__dict__.get("_seed_stack")
        if stack is None:
            return method(self, *args, **kwargs)
        return stack.draw_per_seed(method, args, kwargs)

    return call  # type: ignore[return-value]


@torch.no_grad()
def clip_grad_norm_(agent: Any, module: nn.Module, max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` of `module`'s gradients (eps 1e-6), returning the norm
    before clipping. In a `SeedStack` each seed's gradient is clipped by its own norm, and the
    norms come back (S,)."""
    stack = agent.__dict__.get("_seed_stack")
    seeds = 1 if stack is None else stack.num_seeds
    # seed k's rows are contiguous in every stacked gradient
    grads = [p.grad.view(seeds, -1) for p in module.parameters() if p.grad is not None]
    norms = torch.stack([g.square().sum(dim=1) for g in grads]).sum(dim=0).sqrt()
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, [scale[:, None]] * len(grads))
    return norms[0] if stack is None else norms


def supports_batched_seeds(agent_cls: type) -> bool:
    """Whether `agent_cls` can train several seeds as one model (it has `@per_seed` maths)."""
    return any(getattr(getattr(agent_cls, n, None), "__per_seed__", False) for n in dir(agent_cls))


def batched_agent(
    agent_cls: type, dims: tuple[int, int, float], config: Any, seeds: Sequence[int]
) -> SeedStack:
    """One agent training `seeds` on (S, B, ...) batches."""
    return SeedStack(agent_cls, dims, config, seeds)


class _Call(nn.Module):
    """Holds an agent's networks as submodules, so `functional_call` can swap all their tensors
    for one seed's while `fn` runs."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)
        self.fn: Callable[..., Any] | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        assert self.fn is not None
        return self.fn(*args, **kwargs)


class SeedStack:
    """S agents of one class as one, their parameters stacked (S, ...): see the module doc."""

    def __init__(
        self, agent_cls: type, dims: tuple[int, int, float], config: Any, seeds: Sequence[int]
    ) -> None:
        self.num_seeds = len(seeds)
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):  # the caller's RNG streams are left as they were
            agents = []
            # seed k's initial weights are those of a run seeded k, and its own noise stream
            # (`per_seed_noise`) goes on from where that run's torch RNG stands after them
            self._seed_rng: list[dict[str, torch.Tensor]] = []
            for seed in seeds:
                seed_everything(int(seed))
                agents.append(agent_cls(*dims, config))
                self._seed_rng.append(_rng_state(agents[-1].device))
        random.setstate(py_state)
        np.random.set_state(np_state)
        # the stack's own (CPU) noise stream for updates, seeded by the group
        seed = int(seeds[0]) * 1_000_003 + len(seeds)
        self._rng_state = torch.Generator().manual_seed(seed).get_state()
        self.agent = agent = agents[0]
        self.device = agent.device
        self.selection_metric = getattr(agent, "selection_metric", None)
        if hasattr(agent, "setup") or hasattr(agent, "sample_batch"):
            raise UserError(
                f"{agent_cls.__name__} needs its own buffer set-up: run seeds one by one"
            )
        modules = {n: v for n, v in vars(agent).items() if isinstance(v, nn.Module)}
        # trainable tensors held by the agent itself (a temperature, a Lagrange multiplier)
        self._raw = [
            n
            for n, v in vars(agent).items()
            if isinstance(v, torch.Tensor) and v.is_leaf and v.requires_grad
        ]
        stacked: set[int] = set()
        for name in list(modules) + self._raw:
            mine = getattr(agent, name)
            theirs = [getattr(a, name) for a in agents]
            if isinstance(mine, torch.Tensor):
                groups = [theirs]
            else:
                groups = [
                    list(g)
                    for g in zip(*[[*m.parameters(), *m.buffers()] for m in theirs], strict=True)
                ]
            for group in groups:
                if id(group[0]) in stacked:  # a tensor two attributes share
                    continue
                stacked.add(id(group[0]))
                group[0].data = torch.stack([t.data for t in group])
        self._call = _Call(modules)
        agent._seed_stack = self

    # ------------------------------------------------------------------ training

    def map_seeds(self, method: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """`method(agent, *args, **kwargs)` for every seed at once, arguments (S, ...)."""
        agent, call = self.agent, self._call
        tensors = {**dict(call.named_parameters()), **dict(call.named_buffers())}
        raw = {n: agent.__dict__[n] for n in self._raw}

        def one_seed(tensors: dict, raw_values: dict, args: tuple, kwargs: dict) -> Any:
            saved = {n: agent.__dict__[n] for n in raw_values}
            agent.__dict__.update(raw_values)
            call.fn = functools.partial(method, agent)
            try:
                return torch.func.functional_call(call, tensors, args, kwargs)
            finally:
                agent.__dict__.update(saved)
                call.fn = None

        # mapped over the seed dimension: every tensor argument (None and numbers pass as is)
        in_dims = torch.utils._pytree.tree_map(
            lambda x: 0 if isinstance(x, torch.Tensor) else None, (args, kwargs)
        )
        mapped = torch.func.vmap(one_seed, in_dims=(0, 0, *in_dims), randomness="different")
        return mapped(tensors, raw, args, kwargs)

    def draw_per_seed(self, method: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """`method(agent, ...)` once per seed, from seed k's own RNG stream; outputs stacked."""
        device = torch.device(self.device)
        cuda = [device] if device.type == "cuda" else []
        outputs = []
        for k, state in enumerate(self._seed_rng):
            with torch.random.fork_rng(devices=cuda):
                torch.set_rng_state(state["cpu"])
                if cuda:
                    torch.cuda.set_rng_state(state["cuda"], device)
                outputs.append(method(self.agent, *args, **kwargs))
                self._seed_rng[k] = _rng_state(device)
        return torch.utils._pytree.tree_map(
            lambda *xs: None if xs[0] is None else torch.stack(xs), *outputs
        )

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self._rng_state)
            metrics = self.agent.update(batch)
            self._rng_state = torch.get_rng_state()
        return {k: v.expand(self.num_seeds) if v.dim() == 0 else v for k, v in metrics.items()}

    # ------------------------------------------------------------------ one seed's state

    def seed_state_dict(self, k: int) -> dict[str, Any]:
        """Seed k as a normal agent's state_dict (loads into a normal agent)."""
        state = _select(self.agent.state_dict(), lambda t: t[k].clone(), self.num_seeds)
        state["seed_stack_rng"] = self._rng_state.clone()
        state["seed_rng"] = {name: t.clone() for name, t in self._seed_rng[k].items()}
        return state

    def load_seed_state_dict(self, k: int, state: dict[str, Any]) -> None:
        """Put a normal agent's state_dict (a checkpoint of seed k) into row k."""
        merged = _merge(self.agent.state_dict(), state, k, self.num_seeds)
        self.agent.load_state_dict(merged)
        if "seed_stack_rng" in state:
            self._rng_state = state["seed_stack_rng"].clone()
        if "seed_rng" in state:
            self._seed_rng[k] = {name: t.cpu().clone() for name, t in state["seed_rng"].items()}


def _rng_state(device: str | torch.device) -> dict[str, torch.Tensor]:
    """torch's RNG state now: the CPU stream, and the device's when it is a GPU."""
    state = {"cpu": torch.get_rng_state()}
    if torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _is_module_state(value: Any) -> bool:
    return hasattr(value, "_metadata") or (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(v, torch.Tensor) for v in value.values())
        and "state" not in value
    )


def _select(
    state: Any, row: Callable[[torch.Tensor], torch.Tensor], seeds: int, kind: str = "top"
) -> Any:
    """Walk a stacked state_dict: per-seed tensors go through `row`, shared values stay."""
    if isinstance(state, torch.Tensor):
        per_seed_tensor = kind == "module" or (
            state.dim() >= 1 and (kind == "optimizer" or state.shape[0] == seeds)
        )
        return row(state) if per_seed_tensor else state
    if isinstance(state, dict):
        if "state" in state and "param_groups" in state:  # an optimizer's
            return {**state, "state": _select(state["state"], row, seeds, "optimizer")}
        inner = "module" if kind == "top" and _is_module_state(state) else kind
        return type(state)((k, _select(v, row, seeds, inner)) for k, v in state.items())
    return state


def _merge(stacked: Any, single: Any, k: int, seeds: int, kind: str = "top") -> Any:
    """`stacked` with seed k's entries replaced by `single`'s (the inverse of `_select`)."""
    if isinstance(single, torch.Tensor):
        if kind == "optimizer" and single.dim() == 0:  # a step count: the same for every seed
            return single
        shape = (seeds, *single.shape)
        if isinstance(stacked, torch.Tensor) and stacked.shape == shape:
            out = stacked.detach().clone()
        elif isinstance(stacked, torch.Tensor) and stacked.shape == single.shape:
            out = stacked.detach().expand(shape).clone()  # not per-seed yet (a first metric)
        else:
            out = single.new_zeros(shape)  # rows of seeds not loaded yet: filled by their load
        out[k] = single.to(out.device, out.dtype)
        return out
    if isinstance(single, dict):
        other = stacked if isinstance(stacked, dict) else {}
        if "state" in single and "param_groups" in single:
            return {
                **single,
                "state": _merge(other.get("state"), single["state"], k, seeds, "optimizer"),
            }
        inner = "module" if kind == "top" and _is_module_state(single) else kind
        return type(single)(
            (n, _merge(other.get(n), v, k, seeds, inner)) for n, v in single.items()
        )
    return single


def algorithm_of(config: TrainConfig) -> tuple[type, str]:
    """The agent class and algorithm name of a config (its Config's module)."""
    from dql.registry import agent_class

    module = importlib.import_module(type(config).__module__)
    return agent_class(module), module.ALGORITHM


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
        per_seed = fields_with_role(type(config), "per_seed")
        differ = {
            k for k, v in dataclasses.asdict(config).items() if k not in per_seed and first[k] != v
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
        if "generator" in inspect.signature(self._snapshot.act).parameters:
            return self._snapshot.act(observations, generator=self._generator)
        return self._snapshot.act(observations)  # torch's RNG, which the loop seeds

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
                    self.agent = batched_agent(self.agent_cls, self.dims, config, seeds)
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
