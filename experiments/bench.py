"""Speed of the suite, every figure a ratio against a reference measured in the same run.

    python experiments/bench.py [--quick] [--algorithms A ...] [--seconds S] [--threads N]
                                [--device cpu|cuda|both] [--no-compile] [--out DIR]

What is measured, per algorithm, at paper settings (batch 256, hidden 256, Hopper-sized data:
11-d observations, 3-d actions, random synthetic transitions; no env needed for training):

- gradient steps per second of `update(buffer.sample(256))`, metrics accumulated every step and
  synced once per chunk, as `dql.training.run_training` does; again with `--precision bf16`
  (and, for Diffusion-QL, without compile) to show what each knob contributes;
- matmul FLOPs per step of ours and the reference (torch.utils.flop_counter on eager steps),
  hence each one's fraction of the measured fp32 matmul peak and the fp32 ceiling: the most an
  implementation of the same FLOPs could gain over the reference;
- action selection, milliseconds per `act` call on 1 and on 10 observations;
- evaluation episodes per second on Hopper-v5 (short episodes, no early termination): 10
  episodes in parallel through `dql.evaluation.evaluate` against the same episodes one after
  another (batch-1 `act`, as the published code evaluates), plus the gain of each part alone
  (a free policy: the env's share; 10 act(1) / act(10): the policy's share);
- peak memory of training steps (resident-set high-water mark over the steps, CUDA:
  max_memory_allocated);
- every algorithm that batches seeds (through the generic stack, dql.batched_seeds): 5 seeds trained as one batched model against 1 seed, per gradient step,
  compiled or not (Diffusion-QL), fp32 or bf16, at 1 thread and at every core.

The file is split by role: this one measures; experiments/eager_diffusion_ql.py is the eager
reference, experiments/d3rlpy_adapter.py the d3rlpy mapping (shared with the cross-check),
experiments/bench_report.py writes bench.json and bench.md.

References: for Diffusion-QL `EagerDiffusionQL` (experiments/eager_diffusion_ql.py), the
identical maths written the obvious way, as the published code is (two critic modules, a
Python loop over the reverse steps, nn.Mish, `.item()` logging every step, a per-parameter EMA
loop, plain Adam); for the baselines d3rlpy 2.8.1's implementation of the same algorithm, set
to the same sizes (skipped with a note when `import d3rlpy` fails; it is a benchmark-only extra,
see docs/environment-notes). Diffuser has no reference: its numbers are reported bare.

Fairness on a shared machine: reference and candidate run in alternating chunks (A B A B ...)
and the ratio reported is the median of the per-round ratios, so load that comes and goes hits
both. Warm-up (and torch.compile's compile time, reported separately) is excluded. Results go
to runs/bench/bench.{md,json} (git-ignored; `--out results/bench` for the committed snapshot)
with the machine's description (CPU, cores, threads, load).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import gc
import importlib
import itertools
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bench_report import SEEDS_BATCHED, write_report  # noqa: E402
from d3rlpy_adapter import d3rlpy_algorithm, d3rlpy_available, d3rlpy_dataset  # noqa: E402
from eager_diffusion_ql import EagerDiffusionQL  # noqa: E402

from dql.buffer import ReplayBuffer  # noqa: E402
from dql.data import DatasetInfo, Transitions  # noqa: E402
from dql.registry import ALGORITHMS, agent_class  # noqa: E402

OBSERVATION_DIM, ACTION_DIM, BATCH_SIZE, HIDDEN = 11, 3, 256, 256
DATASET_SIZE, EPISODE_LENGTH = 20_000, 1000
BENCH_ALGORITHMS = ("diffusion_ql", "td3bc", "iql", "cql", "bcq", "bc", "diffuser")


# --------------------------------------------------------------------------- the machine


def machine_description(threads: int) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    flags = ""
    with contextlib.suppress(OSError):
        flags = Path("/proc/cpuinfo").read_text()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    description = {
        "cpu": cpu,
        "cores": cores,
        "avx512_bf16": "avx512_bf16" in flags,
        "torch": torch.__version__,
        "threads": threads,
        "python": platform.python_version(),
        "load_average_at_start": _load_average(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    with contextlib.suppress(ImportError):
        import d3rlpy

        description["d3rlpy"] = d3rlpy.__version__
    return description


def _load_average() -> list[float] | None:
    with contextlib.suppress(OSError, AttributeError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


# --------------------------------------------------------------------------- synthetic data


def synthetic_transitions(size: int = DATASET_SIZE, seed: int = 0) -> Transitions:
    """Random Hopper-sized transitions in episodes of EPISODE_LENGTH steps."""
    rng = np.random.default_rng(seed)
    observations = rng.standard_normal((size + 1, OBSERVATION_DIM)).astype(np.float32)
    episode_ids = np.arange(size) // EPISODE_LENGTH
    timeouts = np.zeros(size, np.float32)
    timeouts[EPISODE_LENGTH - 1 :: EPISODE_LENGTH] = 1.0
    return Transitions(
        observations=observations[:-1],
        actions=rng.uniform(-1, 1, (size, ACTION_DIM)).astype(np.float32),
        rewards=rng.standard_normal(size).astype(np.float32),
        next_observations=observations[1:],
        terminals=np.zeros(size, np.float32),
        timeouts=timeouts,
        episode_ids=episode_ids.astype(np.int64),
        info=hopper_info(),
    )


def hopper_info() -> DatasetInfo:
    return DatasetInfo(
        dataset_id="bench/hopper/synthetic-v0",
        source="memory",
        observation_dim=OBSERVATION_DIM,
        action_dim=ACTION_DIM,
        action_low=-np.ones(ACTION_DIM, np.float32),
        action_high=np.ones(ACTION_DIM, np.float32),
        content_hash="synthetic",
        env_id="Hopper-v5",
    )


# --------------------------------------------------------------------------- candidates


def agent_config(name: str, device: str, **extra: Any) -> Any:
    """The algorithm's Config at its defaults on `device`, plus the fields of `extra` it has."""
    module = importlib.import_module(ALGORITHMS[name])
    fields = {f.name for f in dataclasses.fields(module.Config)}
    values = {k: v for k, v in extra.items() if k in fields}
    return module.Config(device=device, progress=False, **values)


def can_batch_seeds(name: str) -> bool:
    from dql.batched_seeds import supports_batched_seeds

    return supports_batched_seeds(agent_class(importlib.import_module(ALGORITHMS[name])))


def has_field(name: str, field: str) -> bool:
    module = importlib.import_module(ALGORITHMS[name])
    return field in {f.name for f in dataclasses.fields(module.Config)}


def build_agent(name: str, device: str, buffer: ReplayBuffer, **extra: Any) -> Any:
    module = importlib.import_module(ALGORITHMS[name])
    config = agent_config(name, device, **extra)
    agent = agent_class(module)(OBSERVATION_DIM, ACTION_DIM, 1.0, config)
    if hasattr(agent, "setup"):
        agent.setup(buffer)
    return agent


class Trainer:
    """A thing that runs n training steps and then waits for the device: `run(n)`."""

    def __init__(self, run: Callable[[int], None], label: str) -> None:
        self.run, self.label = run, label
        self.cpu_rates: list[float] = []  # steps per CPU-second of this process, per round


def candidate_trainer(agent: Any, buffer: ReplayBuffer, device: str, label: str) -> Trainer:
    """Steps as run_training takes them: sample, update, accumulate metrics; sync per chunk."""
    sample = getattr(agent, "sample_batch", None) or (lambda buf, n: buf.sample(n))

    def run(n: int) -> None:
        accum: dict[str, torch.Tensor] = {}
        for _ in range(n):
            metrics = agent.update(sample(buffer, BATCH_SIZE))
            for k, v in metrics.items():
                v = v.detach().float()
                accum[k] = accum[k] + v if k in accum else v
        if accum:
            torch.stack([v.mean() for v in accum.values()]).tolist()
        _sync(device)

    return Trainer(run, label)


def eager_reference_trainer(ref: EagerDiffusionQL, buffer: ReplayBuffer, device: str) -> Trainer:
    def run(n: int) -> None:
        for _ in range(n):
            ref.update(buffer.sample(BATCH_SIZE))  # .item() inside: synced every step
        _sync(device)

    return Trainer(run, "eager reference")


def d3rlpy_trainer(algo: Any, dataset: Any, device: str) -> Trainer:
    def run(n: int) -> None:
        for _ in range(n):
            algo.update(dataset.sample_transition_batch(BATCH_SIZE))
        _sync(device)

    return Trainer(run, "d3rlpy")


def batched_seeds_trainer(agent: Any, buffer: ReplayBuffer, seeds: int, device: str) -> Trainer:
    """S seeds in one model: S independent batches (one generator each) stacked to (S, B, ...)."""
    generators = []
    for seed in range(seeds):
        generator = torch.Generator(device=buffer.device)
        generator.manual_seed(seed)
        generators.append(generator)

    def run(n: int) -> None:
        accum: dict[str, torch.Tensor] = {}
        for _ in range(n):
            batches = [buffer.sample(BATCH_SIZE, generator=g) for g in generators]
            stacked = {k: torch.stack([b[k] for b in batches]) for k in batches[0]}
            for k, v in agent.update(stacked).items():
                v = v.detach().float()
                accum[k] = accum[k] + v if k in accum else v
        torch.stack([v.mean() for v in accum.values()]).tolist()
        _sync(device)

    return Trainer(run, f"{seeds} seeds batched")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- timing


def warm_up(trainer: Trainer, steps: int) -> float:
    """Run `steps` untimed steps (compilation happens here); return the seconds it took."""
    started = time.perf_counter()
    trainer.run(steps)
    return time.perf_counter() - started


def chunk_size(trainer: Trainer, seconds: float) -> int:
    """Steps that take about `seconds` (from one timed step)."""
    started = time.perf_counter()
    trainer.run(1)
    per_step = max(time.perf_counter() - started, 1e-5)
    return max(1, int(seconds / per_step))


def interleaved(
    trainers: list[Trainer], seconds: float, rounds: int
) -> tuple[list[float], list[list[float]]]:
    """Steps/s of each trainer over `rounds` alternating chunks of ~seconds/rounds each.
    Returns the overall rates and the per-round rates (for paired ratios); each trainer also
    keeps its steps per CPU-second (process time, all threads), which time-sharing with other
    processes inflates far less than wall time."""
    sizes = [chunk_size(t, seconds / rounds) for t in trainers]
    per_round: list[list[float]] = [[] for _ in trainers]
    totals = [[0, 0.0] for _ in trainers]
    for trainer in trainers:
        trainer.cpu_rates = []
    for _ in range(rounds):
        for index, (trainer, n) in enumerate(zip(trainers, sizes)):
            started, cpu_started = time.perf_counter(), time.process_time()
            trainer.run(n)
            elapsed = time.perf_counter() - started
            trainer.cpu_rates.append(n / max(time.process_time() - cpu_started, 1e-9))
            per_round[index].append(n / elapsed)
            totals[index][0] += n
            totals[index][1] += elapsed
    return [steps / elapsed for steps, elapsed in totals], per_round


def paired_ratio(candidate: list[float], reference: list[float]) -> float:
    """Median over rounds of candidate rate / reference rate (higher: candidate faster)."""
    return float(np.median(np.asarray(candidate) / np.asarray(reference)))


def time_calls(fn: Callable[[], Any], seconds: float, min_calls: int = 3) -> float:
    """Median milliseconds per call over ~seconds, after one warm-up call; a call slower than
    `seconds` (a planner) is timed once, by its warm-up."""
    tic = time.perf_counter()
    fn()
    first = time.perf_counter() - tic
    if first > seconds:
        return first * 1000
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - started < seconds:
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
        if len(times) >= 1000:
            break
    return float(np.median(times) * 1000)


def time_call_pairs(
    mine: Callable[[], Any], theirs: Callable[[], Any], seconds: float
) -> tuple[float, float]:
    """Median milliseconds per call of two functions called alternately (A B A B) for about
    2 x seconds, after a warm-up call each."""
    mine()
    theirs()
    times: tuple[list[float], list[float]] = ([], [])
    started = time.perf_counter()
    while len(times[0]) < 3 or time.perf_counter() - started < 2 * seconds:
        for fn, kept in ((mine, times[0]), (theirs, times[1])):
            tic = time.perf_counter()
            fn()
            kept.append(time.perf_counter() - tic)
        if len(times[0]) >= 1000:
            break
    return float(np.median(times[0]) * 1000), float(np.median(times[1]) * 1000)


# --------------------------------------------------------------------------- memory


def _rss_kib(field: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def peak_memory_mib(run: Callable[[], None], device: str) -> tuple[float | None, str]:
    """Memory the steps in `run` need on top of what is resident before them, in MiB:
    CUDA max_memory_allocated; on CPU the resident-set high-water mark (VmHWM, reset through
    /proc/self/clear_refs after returning freed heap to the OS), else the ru_maxrss delta."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20, "cuda max_memory_allocated"
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        base = _rss_kib("VmRSS")
        run()
        peak = _rss_kib("VmHWM")
        if base is not None and peak is not None:
            return (peak - base) / 1024, "VmHWM - VmRSS before"
    except OSError:
        pass
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (after - before) / 1024, "ru_maxrss delta (a lower bound)"


# --------------------------------------------------------------------------- evaluation


def hopper_env_fn(max_episode_steps: int) -> Callable[[], Any]:
    import gymnasium as gym

    def make() -> Any:  # every episode runs max_episode_steps: same work in both modes
        return gym.make(
            "Hopper-v5", max_episode_steps=max_episode_steps, terminate_when_unhealthy=False
        )

    return make


def episodes_per_second(
    act: Callable[[np.ndarray], np.ndarray], episodes: int, max_steps: int, parallel: bool
) -> float:
    from dql.evaluation import evaluate

    info, env_fn = hopper_info(), hopper_env_fn(max_steps)
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if parallel:
            evaluate(act, info, num_episodes=episodes, seed=0, env_fn=env_fn, progress=False)
        else:
            for episode in range(episodes):
                evaluate(act, info, num_episodes=1, seed=episode, env_fn=env_fn, progress=False)
    return episodes / (time.perf_counter() - started)


# --------------------------------------------------------------------------- the benchmark


@dataclasses.dataclass
class Settings:
    algorithms: list[str]
    seconds: float
    rounds: int
    device: str
    compile: bool
    quick: bool
    eval_episodes: int = 10
    eval_steps: int = 100
    warmup_steps: int = 5


def bench_algorithm(name: str, s: Settings, buffer: ReplayBuffer, notes: list[str]) -> dict:
    """Every measurement of one algorithm on one device."""
    device = s.device
    row: dict[str, Any] = {"algorithm": name, "device": device}
    compiled = s.compile and has_field(name, "compile")
    extra: dict[str, Any] = {"compile": compiled} if has_field(name, "compile") else {}
    agent = build_agent(name, device, buffer, **extra)
    candidate = candidate_trainer(agent, buffer, device, "ours")
    row["compile"] = compiled
    row["warmup_s"] = round(warm_up(candidate, s.warmup_steps), 2)

    # the reference of this algorithm
    reference: Trainer | None = None
    ref_act: Callable[[np.ndarray], np.ndarray] | None = None
    if name == "diffusion_ql":
        torch.manual_seed(0)
        eager = EagerDiffusionQL(OBSERVATION_DIM, ACTION_DIM, 1.0, device)
        reference, ref_act = eager_reference_trainer(eager, buffer, device), eager.act
        row["reference"] = "eager reference (this file)"
    elif d3rlpy_available() is None:
        ours = agent_config(name, device)
        high = np.ones(ACTION_DIM, np.float32)
        same = dict(device=device, preprocessing=False)  # both sides take normalised data
        algo = d3rlpy_algorithm(name, ours, 1_000_000, high, **same)
        if algo is not None:
            dataset = d3rlpy_dataset(_transitions_of(buffer))
            algo.build_with_dataset(dataset)
            reference = d3rlpy_trainer(algo, dataset, device)
            acting = d3rlpy_algorithm(name, ours, 1_000_000, high, for_acting=True, **same)
            acting.build_with_dataset(dataset)
            ref_act = acting.predict
            row["reference"] = "d3rlpy " + type(algo).__name__
    if reference is None:
        row["reference"] = None
    if reference is not None:
        warm_up(reference, max(2, s.warmup_steps // 2))

    # matmul FLOPs of one step (mean of 2: some updates alternate), counted on the eager path
    counted = build_agent(name, device, buffer, compile=False) if compiled else agent
    row["gflop_per_step"] = gflop_per_step(candidate_trainer(counted, buffer, device, "count"))
    if reference is not None:
        row["reference_gflop_per_step"] = gflop_per_step(reference)

    # what each speed knob contributes: without compile (Diffusion-QL), in bf16 (all that have it)
    variants: list[Trainer] = []
    if not s.quick:
        settings: dict[str, dict[str, Any]] = {"bf16": {**extra, "precision": "bf16"}}
        if compiled:
            settings = {"no compile": {"compile": False}, **settings}
        for label, values in settings.items():
            if all(has_field(name, k) for k in values):
                variant = candidate_trainer(
                    build_agent(name, device, buffer, **values), buffer, device, label
                )
                warm_up(variant, s.warmup_steps)
                variants.append(variant)

    # training throughput, A B A B
    trainers = [reference] if reference is not None else []
    trainers += [candidate, *variants]
    rates, per_round = interleaved(trainers, s.seconds * len(trainers), s.rounds)
    mine = len(trainers) - len(variants) - 1
    row["steps_per_s"] = round(rates[mine], 2)
    row["steps_per_cpu_s"] = round(float(np.median(trainers[mine].cpu_rates)), 2)
    if reference is not None:
        row["reference_steps_per_s"] = round(rates[0], 2)
        row["train_ratio"] = round(paired_ratio(per_round[mine], per_round[0]), 3)
        row["train_ratio_cpu"] = round(
            paired_ratio(trainers[mine].cpu_rates, trainers[0].cpu_rates), 3
        )
    if variants:
        row["variants"] = [
            {
                "variant": t.label,
                "steps_per_s": round(rates[i], 2),
                "ratio": round(paired_ratio(per_round[i], per_round[0]), 3)
                if reference is not None
                else None,
                "ratio_cpu": round(paired_ratio(t.cpu_rates, trainers[0].cpu_rates), 3)
                if reference is not None
                else None,
            }
            for i, t in enumerate(trainers)
            if t in variants
        ]

    # action selection: ms per call on 1 and 10 observations
    rng = np.random.default_rng(0)
    for batch in (1, 10):
        if batch > 1 and row["act_ms_1"] > 2000:  # a planner: 10 plans would take minutes
            notes.append(
                f"{name}: act on 10 observations not timed (one takes {row['act_ms_1']:.0f} ms)"
            )
            break
        obs = rng.standard_normal((batch, OBSERVATION_DIM)).astype(np.float32)
        budget = s.seconds / 4
        with torch.no_grad():
            if ref_act is None:
                row[f"act_ms_{batch}"] = round(time_calls(lambda o=obs: agent.act(o), budget), 3)
                continue
            mine, theirs = time_call_pairs(
                lambda o=obs: agent.act(o), lambda o=obs: ref_act(o), budget
            )
            row[f"act_ms_{batch}"] = round(mine, 3)
            row[f"reference_act_ms_{batch}"] = round(theirs, 3)
            row[f"act_ratio_{batch}"] = round(theirs / mine, 3)

    # peak memory of training steps
    steps = max(2, s.warmup_steps)
    mib, how = peak_memory_mib(lambda: candidate.run(steps), device)
    row["peak_mib"] = None if mib is None else round(mib, 1)
    row["memory_method"] = how
    if reference is not None:
        ref_mib, _ = peak_memory_mib(lambda: reference.run(steps), device)
        row["reference_peak_mib"] = None if ref_mib is None else round(ref_mib, 1)
        if mib and ref_mib:
            row["memory_ratio"] = round(ref_mib / mib, 3)
    return row


def _transitions_of(buffer: ReplayBuffer) -> Transitions:
    return synthetic_transitions(buffer.size)


def act_seconds(act: Callable[[np.ndarray], np.ndarray], batch: int, calls: int = 20) -> float:
    obs = np.random.default_rng(0).standard_normal((batch, OBSERVATION_DIM)).astype(np.float32)
    act(obs)
    started = time.perf_counter()
    for _ in range(calls):
        act(obs)
    return (time.perf_counter() - started) / calls


def bench_evaluation(name: str, s: Settings, buffer: ReplayBuffer) -> dict[str, Any]:
    """Episodes/s: 10 in parallel through dql.evaluation.evaluate vs one after another; for
    Diffusion-QL also against the eager reference one episode after another."""
    extra = {"compile": s.compile} if has_field(name, "compile") else {}
    agent = build_agent(name, s.device, buffer, **extra)
    n, steps = s.eval_episodes, s.eval_steps
    episodes_per_second(agent.act, 1, 2, parallel=False)  # warm-up: envs, act caches
    episodes_per_second(agent.act, n, 2, parallel=True)
    rates: dict[str, list[float]] = {"parallel": [], "sequential": [], "reference": []}
    reference = None
    if name == "diffusion_ql":
        torch.manual_seed(0)
        reference = EagerDiffusionQL(OBSERVATION_DIM, ACTION_DIM, 1.0, s.device)
    for _ in range(max(1, s.rounds // 2)):  # A B A B
        rates["parallel"].append(episodes_per_second(agent.act, n, steps, parallel=True))
        rates["sequential"].append(episodes_per_second(agent.act, n, steps, parallel=False))
        if reference is not None:
            rates["reference"].append(episodes_per_second(reference.act, n, steps, parallel=False))
    # the gain of each part alone (Amdahl): with a free policy only the env's own step remains,
    # which 10 envs in one process cannot share; act alone gains 10 act(1) / act(10)
    free = lambda obs: np.zeros((len(obs), ACTION_DIM), np.float32)  # noqa: E731
    free_rates = [episodes_per_second(free, n, steps, parallel=p) for p in (True, False)]
    act_1, act_n = (act_seconds(agent.act, k) for k in (1, n))
    row: dict[str, Any] = {
        "algorithm": name,
        "device": s.device,
        "episodes": n,
        "episode_steps": steps,
        "free_policy_parallel_vs_sequential": round(free_rates[0] / free_rates[1], 3),
        "act_alone": round(n * act_1 / act_n, 3),
        "parallel_episodes_per_s": round(float(np.mean(rates["parallel"])), 3),
        "sequential_episodes_per_s": round(float(np.mean(rates["sequential"])), 3),
        "parallel_vs_sequential": round(paired_ratio(rates["parallel"], rates["sequential"]), 3),
    }
    if reference is not None:
        row["reference_sequential_episodes_per_s"] = round(float(np.mean(rates["reference"])), 3)
        row["parallel_vs_reference_sequential"] = round(
            paired_ratio(rates["parallel"], rates["reference"]), 3
        )
    return row


def bench_batched_seeds(
    s: Settings, buffer: ReplayBuffer, notes: list[str], name: str = "diffusion_ql"
) -> dict | None:
    """Wall time of one step of S seeds as one model (dql.batched_seeds' stack) over one step
    of one seed."""
    from dql.batched_seeds import batched_agent, supports_batched_seeds

    agent_cls = agent_class(importlib.import_module(ALGORITHMS[name]))
    if not supports_batched_seeds(agent_cls):
        notes.append(f"batched seeds: {name} cannot batch seeds; not measured")
        return None
    # every setting a researcher might run with: compiled or not, fp32 or bf16, and on CPU at
    # the bench's threads and at every core (a batched step's bigger matmuls use several cores
    # where one seed's small ones may not)
    can_compile = has_field(name, "compile")
    compiles = [True, False] if can_compile and s.compile and not s.quick else [False]
    precisions = ["fp32"] if s.quick else ["fp32", "bf16"]
    threads = torch.get_num_threads()
    counts = [threads] if s.device != "cpu" else sorted({threads, os.cpu_count() or threads})
    rows = []
    for count, compiled, precision in itertools.product(counts, compiles, precisions):
        # threads first: compiled CPU kernels keep the thread count they were compiled with
        torch.set_num_threads(count)
        extra = {"compile": compiled} if can_compile else {}
        config = agent_config(name, s.device, precision=precision, **extra)
        single = agent_cls(OBSERVATION_DIM, ACTION_DIM, 1.0, config)
        seeds = list(range(SEEDS_BATCHED))
        batched = batched_agent(agent_cls, (OBSERVATION_DIM, ACTION_DIM, 1.0), config, seeds)
        one = candidate_trainer(single, buffer, s.device, "1 seed")
        many = batched_seeds_trainer(batched, buffer, SEEDS_BATCHED, s.device)
        warm_up(one, s.warmup_steps)
        warm_up(many, s.warmup_steps)
        rates, per_round = interleaved([one, many], 2 * s.seconds, s.rounds)
        # wall time of a batched step over a single step = rate_1 / rate_S
        ratio = float(np.median(np.asarray(per_round[0]) / np.asarray(per_round[1])))
        cpu = float(np.median(np.asarray(one.cpu_rates) / np.asarray(many.cpu_rates)))
        rows.append(
            {
                "algorithm": name,
                "compile": compiled,
                "precision": precision,
                "threads": count,
                "single_steps_per_s": round(rates[0], 2),
                "batched_steps_per_s": round(rates[1], 2),
                "batched_time_over_single": round(ratio, 3),
                "batched_cpu_time_over_single": round(cpu, 3),
                "seed_steps_per_s_gain": round(SEEDS_BATCHED / ratio, 3),
                "single_gflop_per_step": gflop_per_step(one) if precision == "fp32" else None,
            }
        )
        print(f"    {rows[-1]}", flush=True)
    torch.set_num_threads(threads)
    return {"seeds": SEEDS_BATCHED, "device": s.device, **rows[0], "settings": rows}


def bench_q_gradient(s: Settings, buffer: ReplayBuffer) -> list[dict[str, Any]]:
    """Diffusion-QL: steps/s of EDP's action approximation (q_gradient approx) over the
    whole-chain Q gradient (chain), same compile and precision, at T = 5, 20 and 50."""
    rows = []
    for steps in (5,) if s.quick else (5, 20, 50):
        trainers = []
        for mode in ("chain", "approx"):
            config = dict(q_gradient=mode, n_timesteps=steps, compile=s.compile)
            agent = build_agent("diffusion_ql", s.device, buffer, **config)
            trainers.append(candidate_trainer(agent, buffer, s.device, mode))
            warm_up(trainers[-1], s.warmup_steps)
        rates, per_round = interleaved(trainers, 2 * s.seconds, s.rounds)
        rows.append(
            {
                "n_timesteps": steps,
                "device": s.device,
                "compile": s.compile,
                "chain_steps_per_s": round(rates[0], 2),
                "approx_steps_per_s": round(rates[1], 2),
                "approx_over_chain": round(paired_ratio(per_round[1], per_round[0]), 3),
            }
        )
        print(f"    {rows[-1]}", flush=True)
    return rows


def matmul_gflops(device: str, seconds: float) -> float:
    """fp32 256x256x256 matmul rate per CPU-second (CUDA: per second) on this device: the
    ceiling for MLP training steps."""
    a = torch.randn(BATCH_SIZE, HIDDEN, device=device)
    b = torch.randn(HIDDEN, HIDDEN, device=device)
    clock = time.perf_counter if device.startswith("cuda") else time.process_time
    calls, started = 0, clock()
    while calls < 200 or clock() - started < seconds:
        a @ b
        calls += 1
    _sync(device)
    return 2 * BATCH_SIZE * HIDDEN * HIDDEN * calls / (clock() - started) / 1e9


def gflop_per_step(trainer: Trainer, steps: int = 2) -> float | None:
    """Matmul GFLOP of one training step (forward and backward), counted by torch's
    FlopCounterMode over `steps` steps; None where nothing is counted (not torch)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        trainer.run(steps)
    total = counter.get_total_flops()
    return round(total / steps / 1e9, 3) if total else None


def diffusion_ql_gflop_per_step(n_timesteps: int = 5) -> float:
    """Multiply-adds of one Diffusion-QL step at the bench's sizes, x2 (forward 1, backward 2
    per layer; critic weight gradients skipped in the actor step)."""
    denoiser = (ACTION_DIM + 16 + OBSERVATION_DIM) * HIDDEN + 2 * HIDDEN * HIDDEN
    denoiser += HIDDEN * ACTION_DIM
    critic = 2 * ((OBSERVATION_DIM + ACTION_DIM) * HIDDEN + 2 * HIDDEN * HIDDEN + HIDDEN)
    macs = n_timesteps * denoiser  # target actions (EMA actor, no grad)
    macs += critic  # target critics
    macs += 3 * critic  # critic forward + backward
    macs += 3 * denoiser  # denoising loss forward + backward
    macs += 3 * n_timesteps * denoiser  # sampled actions with gradients
    macs += 2 * critic  # Q of the sampled actions: forward + input gradients
    return 2 * macs * BATCH_SIZE / 1e9


def add_efficiency(row: dict[str, Any], peak: float) -> None:
    """Achieved matmul GFLOP per CPU-second, ours and the reference's, as fractions of `peak`
    (a bare fp32 matmul's rate measured in this run): how far each is from the roofline."""
    gflop, ref_gflop = row.get("gflop_per_step"), row.get("reference_gflop_per_step")
    if gflop:
        row["fraction_of_peak"] = round(gflop * row["steps_per_cpu_s"] / peak, 3)
    if ref_gflop and row.get("train_ratio_cpu"):
        ref_rate = row["steps_per_cpu_s"] / row["train_ratio_cpu"]
        row["reference_fraction_of_peak"] = round(ref_gflop * ref_rate / peak, 3)
        # a reference at fraction f of peak can be beaten by at most 1/f with the same FLOPs
        row["fp32_ceiling_ratio"] = round(peak / (ref_gflop * ref_rate), 2)


# --------------------------------------------------------------------------- report
# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few steps of each (smoke test)")
    parser.add_argument(
        "--algorithms", nargs="+", default=None, help=f"subset of {' '.join(BENCH_ALGORITHMS)}"
    )
    parser.add_argument(
        "--seconds", type=float, default=None, help="seconds per implementation per measurement"
    )
    parser.add_argument("--rounds", type=int, default=None, help="A B rounds per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument(
        "--device", choices=("cpu", "cuda", "both"), default="both", help="both: cuda if present"
    )
    parser.add_argument("--no-compile", action="store_true", help="measure without torch.compile")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation measurement")
    parser.add_argument(
        "--out",
        default=str(ROOT / "runs" / "bench"),
        help="output directory (default: the git-ignored runs/bench; the committed report is "
        "made with --out results/bench)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    algorithms = args.algorithms or list(BENCH_ALGORITHMS)
    unknown = [a for a in algorithms if a not in BENCH_ALGORITHMS]
    if unknown:
        print(f"error: unknown algorithm(s) {unknown}; choose from {BENCH_ALGORITHMS}")
        return 2
    torch.set_num_threads(max(1, args.threads))
    devices = ["cpu"]
    if args.device in ("cuda", "both") and torch.cuda.is_available():
        devices = ["cuda"] if args.device == "cuda" else ["cpu", "cuda"]
    elif args.device == "cuda":
        print("error: --device cuda but CUDA is not available")
        return 2
    quick = args.quick
    seconds = args.seconds if args.seconds is not None else (0.3 if quick else 3.0)
    rounds = args.rounds if args.rounds is not None else (2 if quick else 4)
    notes: list[str] = []
    missing = d3rlpy_available()
    if missing:
        notes.append(f"baseline references skipped: {missing}")
    compile_on = not (args.no_compile or quick)
    if quick:
        notes.append("--quick: a few steps each, no torch.compile; numbers are only a smoke test")
    result: dict[str, Any] = {
        "machine": machine_description(torch.get_num_threads()),
        "settings": {
            "batch_size": BATCH_SIZE,
            "hidden": HIDDEN,
            "observation_dim": OBSERVATION_DIM,
            "action_dim": ACTION_DIM,
            "seconds": seconds,
            "rounds": rounds,
            "quick": quick,
            "compile": compile_on,
        },
        "algorithms": [],
        "evaluation": [],
        "batched_seeds": None,
        "batched_seeds_generic": [],
        "q_gradient": [],
        "notes": notes,
    }
    buffers = {}
    started = time.perf_counter()
    for device in devices:
        buffer = ReplayBuffer(synthetic_transitions(), device=device, seed=0)
        buffers[device] = buffer
        s = Settings(
            algorithms,
            seconds,
            rounds,
            device,
            compile_on,
            quick,
            eval_episodes=10,
            eval_steps=10 if quick else 100,
            warmup_steps=2 if quick else 5,
        )
        for name in algorithms:
            print(f"[{time.perf_counter() - started:6.1f}s] {name} on {device}", flush=True)
            try:
                row = bench_algorithm(name, s, buffer, notes)
            except Exception as exc:  # one broken algorithm does not lose the others' numbers
                notes.append(f"{name} on {device}: failed ({type(exc).__name__}: {exc})")
                continue
            result["algorithms"].append(row)
            print(f"    {row}", flush=True)
        for name in [a for a in algorithms if can_batch_seeds(a)]:
            print(f"[{time.perf_counter() - started:6.1f}s] batched {name} on {device}", flush=True)
            batched = bench_batched_seeds(s, buffer, notes, name)
            if batched is None:
                continue
            if name == "diffusion_ql" and (result["batched_seeds"] is None or device == "cpu"):
                result["batched_seeds"] = batched
            elif name != "diffusion_ql":
                result["batched_seeds_generic"].append(batched)
            print(f"    {batched}", flush=True)
        if "diffusion_ql" in algorithms:
            print(f"[{time.perf_counter() - started:6.1f}s] q_gradient on {device}", flush=True)
            result["q_gradient"] += bench_q_gradient(s, buffer)
        if not args.no_eval and device == "cpu":
            for name in [a for a in ("diffusion_ql", "td3bc") if a in algorithms]:
                print(f"[{time.perf_counter() - started:6.1f}s] evaluation {name}", flush=True)
                row = bench_evaluation(name, s, buffer)
                result["evaluation"].append(row)
                print(f"    {row}", flush=True)
    cpu_rows = [r for r in result["algorithms"] if r["device"] == "cpu"]
    peak = matmul_gflops("cpu", min(1.0, seconds)) if cpu_rows else None
    result["matmul_gflops"] = peak
    for row in cpu_rows:  # per CPU-second: what time-sharing with other processes does not blur
        add_efficiency(row, peak)
    dql_rows = [r for r in cpu_rows if r["algorithm"] == "diffusion_ql"]
    if dql_rows and dql_rows[0].get("train_ratio_cpu"):
        row = dql_rows[0]
        gflop = row.get("gflop_per_step") or diffusion_ql_gflop_per_step()
        ours = gflop * row["steps_per_cpu_s"]
        result["diffusion_ql_efficiency"] = {
            "gflop_per_step": gflop,
            "matmul_gflops": peak,
            "ours_gflops": ours,
            "ours_fraction": ours / peak,
            "reference_fraction": ours / row["train_ratio_cpu"] / peak,
        }
    result["machine"]["load_average_at_end"] = _load_average()
    result["wall_time_s"] = round(time.perf_counter() - started, 1)
    path = write_report(result, Path(args.out))
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
