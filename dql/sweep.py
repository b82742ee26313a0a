"""Seed sweeps: algorithms x datasets x seeds from one TOML file, run locally or on Ray, resumable.

    dql sweep FILE [--out DIR] [--workers N] [--backend local|ray] [--address ADDR]
                   [--retry-failed] [--cpus-per-run N] [--gpus-per-run G] [--dry-run]
                   [--only GLOB ...] [--launch-for MINUTES]

A sweep file (experiments/sweeps/*.toml):

    name = "demo"                                  # optional; default: the file's stem
    algorithms = ["diffusion_ql", "td3bc"]         # registry names (dql list)
    datasets = ["local/hopper/medium-v0"]          # anything --dataset accepts
    seeds = [0, 1, 2]
    steps = 20_000                                 # any config field shared by every algorithm
    eval_interval = 5_000
    eval_episodes = 5
    [overrides.diffusion_ql]                       # fields for one algorithm only
    steps = 3_000

A run's config is, from weakest to strongest: the algorithm's defaults, its per-task table in
experiments/hyperparams/, the sweep's shared fields, the sweep's per-algorithm overrides. Every
config is built and validated before anything starts, so a typo fails in one line at once.

Each run lives in OUT/ALGORITHM/TASK/seed_N (a normal run directory, see dql.runs). On a rerun:
complete runs are skipped; interrupted runs (Ctrl-C, SIGTERM, a killed worker) continue from their
last checkpoint; runs never started start; failed runs (crashed, diverged) are kept as they are
and listed, and with --retry-failed they are moved aside to seed_N.failed-K and run again from
scratch (a diverged run resumed from its checkpoint would only diverge again). OUT also holds
sweep.toml (a copy of the file), sweep_status.json (the state and error of every run) and
sweep.log; each run's own output goes to its sweep_run.log.

Subsets and time limits: `--only 'td3bc/hopper-medium-expert/*'` (a glob on the run key
ALGORITHM/TASK/seed_N, repeatable) launches only the matching runs; the others keep their state.
`--launch-for 90` starts no run after 90 minutes while letting the running ones finish, so a
machine that is taken away at a known time never loses a run half-trained (local backend).

Local backend: a pool of `--workers` (default: the machine's CPU count) concurrent worker
processes, one per run, each with torch.set_num_threads(cpus_per_run) -- two 1-thread processes
beat one 2-thread process for independent runs. A run's process holds a lock on its run
directory, so two sweeps (or an orphaned worker) never train the same run at once, and killing
one run's process leaves the others running. Ray backend: every run is one `ray.remote` task
requesting `--cpus-per-run`/`--gpus-per-run`; Ray does the scheduling. Run directories must be on
a file system every Ray node sees and can write: before launching, a probe task on every node
checks that it sees a file the driver wrote in OUT and can write there, and the sweep is refused
with the failing nodes named otherwise; OUT is made absolute (a worker's working directory is not
the driver's). An address where nothing listens fails at once, naming it.

Batched seeds: `plan_jobs` turns the runs into jobs, a job being the runs one worker process
trains: one run each, or with `--batched-seeds` the seeds of one (algorithm, dataset) together
for algorithms whose maths is written `@per_seed` (all but the planners, Diffuser and MPC;
dql.batched_seeds' SeedStack). `run_job` hands
such a group to `dql.batched_seeds.run_batched`; each seed still writes its own run directory,
so status, resumption and tables do not change. A group takes one worker (give it
--cpus-per-run threads); on the Ray backend it is one task.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fnmatch
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomllib

from dql.errors import ConfigError, UserError

if TYPE_CHECKING:
    from dql.cli import SweepArgs

SWEEP_KEYS = {"name", "description", "algorithms", "datasets", "seeds", "overrides"}
RUN_LOG = "sweep_run.log"
RUN_LOCK = ".sweep.lock"

# Exit codes of a run's worker process.
EXIT_COMPLETE, EXIT_FAILED, EXIT_BUSY, EXIT_INTERRUPTED = 0, 3, 4, 130


# --------------------------------------------------------------------------- the sweep file


@dataclass
class Sweep:
    """A parsed, checked sweep file."""

    path: Path
    name: str
    algorithms: list[str]  # canonical registry names
    datasets: list[str]
    seeds: list[int]
    settings: dict[str, Any]  # config fields for every run
    overrides: dict[str, dict[str, Any]]  # algorithm -> config fields
    modules: dict[str, str]  # algorithm -> module path
    text: str = ""


@dataclass
class RunSpec:
    """One (algorithm, dataset, seed) run, with every config value it is built from. Plain data,
    so it crosses process boundaries as JSON."""

    algorithm: str
    module: str
    dataset: str
    seed: int
    run_dir: str
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        from dql.data import task_name

        return f"{self.algorithm}/{task_name(self.dataset)}/seed_{self.seed}"


def load_sweep(path: str | os.PathLike) -> Sweep:
    """Read and check a sweep file; every mistake is a `ConfigError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} not found")
    text = path.read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from None

    def fail(message: str) -> ConfigError:
        return ConfigError(f"{path}: {message}")

    missing = [k for k in ("algorithms", "datasets", "seeds") if k not in raw]
    if missing:
        raise fail(
            f"missing key(s) {', '.join(missing)}; a sweep names algorithms, datasets, seeds"
        )
    algorithms = _string_list(raw["algorithms"], "algorithms", fail)
    datasets = _string_list(raw["datasets"], "datasets", fail)
    seeds = raw["seeds"]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise fail(f"seeds must be a non-empty list of integers, like [0, 1, 2]; got {seeds!r}")
    for name, values in (("algorithms", algorithms), ("datasets", datasets), ("seeds", seeds)):
        if len(set(values)) != len(values):
            raise fail(f"{name} lists an entry twice: {values}")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise fail(f"name must be a non-empty string, got {name!r}")

    from dql.registry import ALGORITHMS, canonical_name, load_algorithm

    canonical = []
    for algorithm in algorithms:
        try:
            canonical.append(canonical_name(algorithm))
        except UserError as exc:
            raise fail(str(exc)) from None
    if len(set(canonical)) != len(canonical):
        raise fail(f"algorithms names one algorithm twice (aliases): {algorithms}")
    configs: dict[str, type] = {}
    for algorithm in canonical:
        try:
            configs[algorithm] = load_algorithm(algorithm).Config
        except UserError as exc:
            raise fail(str(exc)) from None

    settings = {k: v for k, v in raw.items() if k not in SWEEP_KEYS}
    _check_fields(settings, configs, "the sweep", fail)
    overrides_raw = raw.get("overrides", {})
    if not isinstance(overrides_raw, dict):
        raise fail("overrides must be tables: [overrides.ALGORITHM] with config fields")
    overrides: dict[str, dict[str, Any]] = {}
    for algorithm, values in overrides_raw.items():
        try:
            key = canonical_name(algorithm)
        except UserError as exc:
            raise fail(f"[overrides.{algorithm}]: {exc}") from None
        if key not in configs:
            raise fail(f"[overrides.{algorithm}]: {key} is not in this sweep's algorithms")
        if not isinstance(values, dict):
            raise fail(f"overrides.{algorithm} must be a table of config fields")
        _check_fields(values, {key: configs[key]}, f"[overrides.{algorithm}]", fail)
        overrides[key] = dict(values)
    return Sweep(
        path=path,
        name=name,
        algorithms=canonical,
        datasets=datasets,
        seeds=list(seeds),
        settings=settings,
        overrides=overrides,
        modules={a: ALGORITHMS[a] for a in canonical},
        text=text,
    )


def _string_list(value: Any, key: str, fail: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise fail(f"{key} must be a non-empty list of strings; got {value!r}")
    return list(value)


def _check_fields(values: dict[str, Any], configs: dict[str, type], where: str, fail: Any) -> None:
    """Every key a field of every given config class, with a value of the field's kind."""
    from dql.training import TrainConfig, fields_with_role, kind_errors

    set_by_sweep = fields_with_role(TrainConfig, "set_by_sweep")
    for key in values:
        if key in set_by_sweep:
            raise fail(
                f"{where}: {key!r} is set by the sweep itself "
                "(use algorithms, datasets, seeds and --out)"
            )
    for algorithm, config_cls in configs.items():
        fields = {f.name for f in dataclasses.fields(config_cls)}
        unknown = [key for key in values if key not in fields]
        if unknown:
            renamed = getattr(config_cls, "RENAMED_FIELDS", {}).get(unknown[0])
            hint = " (put it under [overrides.ALGORITHM])" if len(configs) > 1 else ""
            hint = f" (renamed to {renamed[0]!r})" if renamed else hint
            raise fail(f"{where}: unknown config field {unknown[0]!r} for {algorithm}{hint}")
        for key, kind in kind_errors(config_cls, values).items():
            raise fail(f"{where}: {key} = {values[key]!r} should be {kind}")


# --------------------------------------------------------------------------- planning


def plan_runs(sweep: Sweep, out_dir: str | os.PathLike) -> list[RunSpec]:
    """One validated `RunSpec` per (algorithm, dataset, seed), in file order."""
    from dql.data import task_name
    from dql.hyperparams import task_hyperparams

    out = Path(out_dir)
    runs = []
    for algorithm in sweep.algorithms:
        module = importlib.import_module(sweep.modules[algorithm])
        for dataset in sweep.datasets:
            table = task_hyperparams(algorithm, dataset, module.Config)
            for seed in sweep.seeds:
                run_dir = Path(
                    os.path.normpath(out / algorithm / task_name(dataset) / f"seed_{seed}")
                )
                values = {
                    **table,
                    **sweep.settings,
                    **sweep.overrides.get(algorithm, {}),
                    "dataset": dataset,
                    "seed": seed,
                    "out_dir": os.path.normpath(out),
                    "run_dir": str(run_dir),
                    "progress": False,
                }
                try:
                    module.Config(**values).validate()
                except ConfigError as exc:
                    raise ConfigError(
                        f"{sweep.path}: {algorithm} on {dataset} seed {seed}: {exc}"
                    ) from None
                runs.append(
                    RunSpec(
                        algorithm, sweep.modules[algorithm], dataset, seed, str(run_dir), values
                    )
                )
    return runs


def select_runs(runs: Sequence[RunSpec], globs: Sequence[str]) -> list[RunSpec]:
    """The runs whose key (ALGORITHM/TASK/seed_N) matches one of `globs` (--only); a glob that
    matches nothing is an error naming it."""
    unmatched = [g for g in globs if not any(fnmatch.fnmatchcase(s.key, g) for s in runs)]
    if unmatched:
        example = f"; keys look like {runs[0].key}" if runs else ""
        raise UserError(f"--only {' '.join(unmatched)} matches no run of the sweep{example}")
    return [s for s in runs if any(fnmatch.fnmatchcase(s.key, g) for g in globs)]


def group_by_task(runs: Iterable[RunSpec]) -> dict[tuple[str, str], list[RunSpec]]:
    """Runs grouped by (algorithm, dataset): the unit a batched-seeds trainer would take."""
    groups: dict[tuple[str, str], list[RunSpec]] = {}
    for run in runs:
        groups.setdefault((run.algorithm, run.dataset), []).append(run)
    return groups


def plan_jobs(runs: Sequence[RunSpec], batched_seeds: bool = False) -> list[list[RunSpec]]:
    """The runs one worker process trains, in launch order: one run per job, or with
    `batched_seeds` the seeds of one task together where the algorithm can batch them."""
    if not batched_seeds:
        return [[run] for run in runs]
    jobs: list[list[RunSpec]] = []
    for group in group_by_task(runs).values():
        if len(group) > 1 and _batches_seeds(group[0]):
            jobs.append(group)
        else:
            jobs.extend([run] for run in group)
    return jobs


def _batches_seeds(spec: RunSpec) -> bool:
    from dql.batched_seeds import supports_batched_seeds
    from dql.registry import agent_class

    return supports_batched_seeds(agent_class(importlib.import_module(spec.module)))


def run_state(run_dir: str | os.PathLike) -> str:
    """complete | failed | busy (another process trains it) | interrupted (resumable) | missing."""
    from dql.runs import RunDirectory

    run = RunDirectory(run_dir)
    if run.is_complete():
        return "complete"
    if _lock_is_held(run.path):
        return "busy"
    if run.status().get("status") == "failed":
        return "failed"
    if (run.path / "config.json").exists():
        return "interrupted"
    return "missing"


def move_failed_aside(run_dir: str | os.PathLike) -> Path:
    """Keep a failed run for post-mortem as seed_N.failed-K next to where it was."""
    path = Path(run_dir)
    k = 1
    while (target := path.with_name(f"{path.name}.failed-{k}")).exists():
        k += 1
    path.rename(target)
    return target


# --------------------------------------------------------------------------- one run (worker side)


@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Iterator[bool]:
    """Hold an exclusive lock on the run directory for as long as this process trains it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no protection against double launches
        yield True
        return
    with open(run_dir / RUN_LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        handle.truncate(0)  # who holds it, for people (and tests) looking for the process
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _lock_is_held(run_dir: Path) -> bool:
    if not (run_dir / RUN_LOCK).exists():
        return False
    try:
        import fcntl
    except ImportError:
        return False
    with open(run_dir / RUN_LOCK) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def _wait_for_unlock(run_dirs: Sequence[Path], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(_lock_is_held(d) for d in run_dirs) and time.monotonic() < deadline:
        time.sleep(0.1)


def run_one(spec: RunSpec) -> dict[str, Any]:
    """Train one run in this process and say how it ended; never raises for a run's own failure.
    A run with a config.json continues from its checkpoint (resume)."""
    started = time.perf_counter()
    with _run_lock(Path(spec.run_dir)) as acquired:
        if not acquired:
            return read_outcome(spec, EXIT_BUSY, 0.0)
        try:
            importlib.import_module(spec.module).train(_config(spec))
            code = EXIT_COMPLETE
        except (Exception, KeyboardInterrupt) as exc:  # the run's own failure, recorded
            code = _record_failure(spec, exc)
    return read_outcome(spec, code, time.perf_counter() - started)


def run_job(specs: Sequence[RunSpec], num_threads: int = 1) -> list[dict[str, Any]]:
    """Train a job's runs in this process: one run, or a group of seeds batched into one model."""
    import torch

    torch.set_num_threads(max(1, num_threads))
    if len(specs) > 1:
        return run_batched_seeds(specs)
    return [run_one(spec) for spec in specs]


def run_batched_seeds(specs: Sequence[RunSpec]) -> list[dict[str, Any]]:
    """Train the seeds of one task as one batched model (dql.batched_seeds); each run's outcome
    as `run_one` reports it. Runs locked by another process are left to it."""
    from dql.batched_seeds import run_batched

    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        held = [s for s in specs if stack.enter_context(_run_lock(Path(s.run_dir)))]
        try:
            results: list[Any] = run_batched([_config(s) for s in held]) if held else []
        except (Exception, KeyboardInterrupt) as exc:  # the group could not start
            results = [exc] * len(held)
        codes = {
            s.key: EXIT_COMPLETE if isinstance(r, dict) else _record_failure(s, r)
            for s, r in zip(held, results)
        }
    elapsed = time.perf_counter() - started
    return [read_outcome(s, codes.get(s.key, EXIT_BUSY), elapsed) for s in specs]


def _config(spec: RunSpec) -> Any:
    """The run's config; a run directory that holds a config.json is resumed."""
    resume = (Path(spec.run_dir) / "config.json").exists()
    return importlib.import_module(spec.module).Config(**{**spec.config, "resume": resume})


def _record_failure(spec: RunSpec, exc: BaseException) -> int:
    """The worker's exit code for what training raised. A run that failed before its training
    loop started (bad data, bad config) gets status failed here, as the loop would have done."""
    from dql.errors import DivergenceError
    from dql.runs import RunDirectory
    from dql.training import TrainingInterrupted

    if isinstance(exc, (TrainingInterrupted, KeyboardInterrupt)):
        return EXIT_INTERRUPTED
    traceback.print_exception(exc)
    run = RunDirectory(spec.run_dir)
    if run.status().get("status") != "failed":
        user_facing = isinstance(exc, (UserError, DivergenceError))
        error = str(exc) if user_facing else f"{type(exc).__name__}: {exc}"
        run.set_status("failed", step=0, error=error)
    return EXIT_FAILED


def _outcome(spec: RunSpec, status: str, **fields: Any) -> dict[str, Any]:
    return {"key": spec.key, "run_dir": spec.run_dir, "status": status, **fields}


def _worker_main(job_json: str, num_threads: int) -> int:
    """Entry of a local worker process: `python -m dql.sweep --run-job JSON`."""
    specs = [RunSpec(**spec) for spec in json.loads(job_json)]
    outcomes = run_job(specs, num_threads)
    codes = {
        "complete": EXIT_COMPLETE,
        "failed": EXIT_FAILED,
        "busy": EXIT_BUSY,
        "interrupted": EXIT_INTERRUPTED,
    }
    return max(codes[o["status"]] for o in outcomes)


# --------------------------------------------------------------------------- backends


class LocalBackend:
    """At most `workers` runs at a time, each in its own worker process and session.

    The pool is concurrent.futures' ThreadPoolExecutor, one thread per running job, each
    starting and waiting for one `python -m dql.sweep --run-job` process. Not a
    ProcessPoolExecutor(max_tasks_per_child=1): a worker killed by the OOM killer breaks that
    pool, and every pending run then fails with BrokenProcessPool, where here only the killed
    run is marked interrupted; its workers share the sweep's process group, so a terminal's
    Ctrl-C would reach each worker as well as the one SIGTERM the sweep forwards (a second
    signal stops a run without its checkpoint); and a run's log, its OMP thread count (read
    when torch is imported) and its CPU time (wait4) are per process from the start."""

    def __init__(
        self,
        workers: int,
        cpus_per_run: int = 1,
        echo: Any = None,
        launch_deadline: float | None = None,
    ) -> None:
        self.workers = workers
        self.cpus_per_run = cpus_per_run
        self.echo = echo
        self.launch_deadline = launch_deadline  # time.monotonic() after which nothing starts
        self.stopping = threading.Event()
        self.processes: dict[int, subprocess.Popen] = {}
        self.lock = threading.Lock()

    def run(self, jobs: list[list[RunSpec]], on_done: Any) -> None:
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            futures: dict[Future, list[RunSpec]] = {pool.submit(self._launch, j): j for j in jobs}
            pending = set(futures)
            try:
                while pending:
                    done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                    for future in done:
                        for outcome in future.result():
                            on_done(outcome)
            except KeyboardInterrupt:
                self.stop()
                for future in pending:
                    for outcome in future.result():
                        on_done(outcome)
                raise

    def stop(self) -> None:
        """Launch nothing more; ask running workers to checkpoint and exit (SIGTERM)."""
        self.stopping.set()
        with self.lock:
            for pid in self.processes:  # os.kill, not Popen.send_signal: its poll() would reap
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

    def _launch(self, job: list[RunSpec]) -> list[dict[str, Any]]:
        if self.stopping.is_set():
            return [_outcome(spec, "not started") for spec in job]
        if self.launch_deadline is not None and time.monotonic() > self.launch_deadline:
            return [_outcome(spec, "not started", error="--launch-for time was up") for spec in job]
        log_path = Path(job[0].run_dir) / RUN_LOG
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "dql.sweep",
            "--run-job",
            json.dumps([dataclasses.asdict(spec) for spec in job]),
            "--threads",
            str(self.cpus_per_run),
        ]
        started = time.perf_counter()
        with open(log_path, "a") as log:
            log.write(f"--- {_now()} worker started\n")
            log.flush()
            with self.lock:
                if self.stopping.is_set():
                    return [_outcome(spec, "not started") for spec in job]
                # Own session: the terminal's Ctrl-C reaches only the sweep, which forwards one
                # SIGTERM, so a worker is never interrupted twice while saving its checkpoint.
                process = subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=_worker_env(self.cpus_per_run),
                    start_new_session=True,
                )
                self.processes[process.pid] = process
            if self.echo is not None:
                self.echo(f"  started {', '.join(spec.key for spec in job)}")
            code, cpu_time = _wait_with_cpu_time(process)
            with self.lock:
                self.processes.pop(process.pid, None)
        outcomes = [read_outcome(spec, code, time.perf_counter() - started) for spec in job]
        for outcome in outcomes:  # CPU seconds of the worker: what budgets are planned with
            outcome["cpu_time"] = cpu_time / len(job) if cpu_time is not None else None
        return outcomes


def _wait_with_cpu_time(process: subprocess.Popen) -> tuple[int, float | None]:
    """Wait for a worker; return its exit code and the CPU seconds (user + system) it used."""
    if not hasattr(os, "wait4"):
        return process.wait(), None
    while True:
        try:
            _, status, usage = os.wait4(process.pid, 0)
            break
        except InterruptedError:
            continue
        except ChildProcessError:  # reaped elsewhere
            return process.wait(), None
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_utime + usage.ru_stime


def _worker_env(num_threads: int) -> dict[str, str]:
    env = dict(os.environ)
    # The worker imports what this process can (algorithm modules registered from tests too).
    paths = [p for p in sys.path if p and Path(p).exists()]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(num_threads)
    return env


def read_outcome(spec: RunSpec, returncode: int, elapsed: float) -> dict[str, Any]:
    """How a run ended, from its run directory (ground truth) and the exit code of the process
    that trained it (a worker's, or `run_one`'s own in the Ray task): the one place outcomes
    are read, whichever backend ran the run."""
    from dql.runs import RunDirectory

    run = RunDirectory(spec.run_dir)
    if run.is_complete():
        result = run.result()
        return _outcome(
            spec,
            "complete",
            final_score=result.get("final_score"),
            best_score=result.get("best_score"),
            wall_time=elapsed,
        )
    status = run.status()
    if returncode == EXIT_BUSY:
        return _outcome(spec, "busy", error="another process is training this run")
    if status.get("status") == "failed":
        return _outcome(spec, "failed", error=status.get("error"), wall_time=elapsed)
    if returncode < 0:
        name = signal.Signals(-returncode).name
        error = f"worker killed by {name} (out of memory?); a rerun resumes from the checkpoint"
    elif returncode == EXIT_INTERRUPTED:
        error = "interrupted; a rerun resumes from the checkpoint"
    else:
        error = f"worker exited with code {returncode}; see {Path(spec.run_dir) / RUN_LOG}"
    return _outcome(spec, "interrupted", error=error, wall_time=elapsed)


class RayBackend:
    """Each job a `ray.remote` task asking for `cpus_per_run` CPUs and `gpus_per_run` GPUs."""

    def __init__(
        self, address: str | None, cpus_per_run: int = 1, gpus_per_run: float = 0.0
    ) -> None:
        try:
            import ray
        except ImportError:
            raise UserError(
                "the ray backend needs Ray: pip install 'ray[default]' (or pip install -e '.[ray]')"
            ) from None
        self.ray = ray
        if not ray.is_initialized():  # run_sweep checked the address is reachable
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except Exception as exc:  # unreachable cluster, bad address
                raise UserError(
                    f"cannot connect to Ray at {address or 'a new local cluster'}: {exc}"
                ) from None
        self.cpus_per_run = cpus_per_run
        self.gpus_per_run = gpus_per_run

    def check_shared_dir(self, out: Path, timeout: float = 120.0) -> None:
        """Refuse `out` unless a task on every alive node with CPUs sees the driver's token file
        in it and can write there: runs write their directories on the workers' file system."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        token = os.urandom(8).hex()
        probe_file = out / f".ray_probe_{token}"
        probe_file.write_text(token)
        probe = self.ray.remote(num_cpus=0, max_retries=0)(_probe_shared_dir)
        nodes = [n for n in self.ray.nodes() if n.get("Alive") and n["Resources"].get("CPU")]
        refs = {
            probe.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(str(out), token): n.get("NodeManagerAddress", n["NodeID"])
            for n in nodes
        }
        try:
            done, pending = self.ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
            problems = [f"node {refs[r]}: no answer in {timeout:.0f} s" for r in pending]
            problems += [f"node {refs[r]}: {err}" for r in done if (err := self.ray.get(r))]
        finally:
            probe_file.unlink(missing_ok=True)
        if problems:
            raise UserError(
                f"Ray workers cannot use the output directory {out} ({'; '.join(problems)}); "
                "the ray backend needs --out on a file system every node shares and can write"
            )

    def run(self, jobs: list[list[RunSpec]], on_done: Any) -> None:
        ray = self.ray
        # max_calls=1: a fresh worker process per run (clean thread settings, memory given back).
        task = ray.remote(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run, max_calls=1)(
            _ray_job
        )
        refs = {task.remote(job, self.cpus_per_run): job for job in jobs}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=1.0)
                for ref in done:
                    for outcome in self._get(ref, refs[ref]):
                        on_done(outcome)
        except KeyboardInterrupt:
            for ref in pending:  # a running task gets KeyboardInterrupt and checkpoints
                ray.cancel(ref)
            for ref in pending:
                # The driver leaving kills its workers: wait until each run has saved and let go.
                _wait_for_unlock([Path(spec.run_dir) for spec in refs[ref]], timeout=120.0)
                for outcome in self._get(ref, refs[ref]):
                    on_done(outcome)
            raise

    def _get(self, ref: Any, job: list[RunSpec]) -> list[dict[str, Any]]:
        try:
            return self.ray.get(ref)
        except Exception as exc:  # worker died, task cancelled: the run dir tells what is left
            first_line = (str(exc).strip().splitlines() or [""])[0][:200]
            outcomes = [read_outcome(spec, 1, 0.0) for spec in job]
            for outcome in outcomes:
                if outcome["status"] != "complete":
                    outcome["error"] = f"{type(exc).__name__}: {first_line}"
            return outcomes


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Fail fast, naming the address, where nothing listens: ray.init retries for minutes."""
    if address in (None, "", "auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address must be HOST:PORT (the head's GCS port), got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UserError(
            f"cannot reach the Ray head at {address}: {exc.strerror or exc}; "
            "is `ray start --head` running there and the port open?"
        ) from None


def _probe_shared_dir(out: str, token: str) -> str:
    """Run on a Ray node: '' if it sees the driver's token in `out` and can write there."""
    probe_file = Path(out) / f".ray_probe_{token}"
    try:
        if probe_file.read_text() != token:
            return "sees another file in its place"
    except OSError:
        return "does not see the driver's files there"
    try:
        written = Path(out) / f".ray_probe_{token}_{os.getpid()}"
        written.write_text(token)
        written.unlink()
    except OSError as exc:
        return f"cannot write there ({exc.strerror or exc})"
    return ""


def _ray_job(job: list[RunSpec], num_threads: int) -> list[dict[str, Any]]:
    if len(job) > 1:  # batched seeds: one process for the group, logged with its first seed
        job, batched = job[:1], job
    else:
        batched = None
    outcomes = []
    for spec in job:
        log_path = Path(spec.run_dir) / RUN_LOG
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with (
            open(log_path, "a") as log,
            contextlib.redirect_stdout(log),
            contextlib.redirect_stderr(log),
        ):
            print(f"--- {_now()} ray worker started", flush=True)
            outcomes.extend(run_job(batched or [spec], num_threads))
    return outcomes


# --------------------------------------------------------------------------- the sweep (driver side)


@dataclass
class SweepReport:
    """What a sweep invocation found and did; `runs` maps run key -> its latest outcome."""

    out_dir: Path
    runs: dict[str, dict[str, Any]]
    launched: int = 0
    interrupted_by_user: bool = False

    def count(self, status: str) -> int:
        return sum(1 for r in self.runs.values() if r["status"] == status)

    @property
    def all_complete(self) -> bool:
        return all(r["status"] == "complete" for r in self.runs.values())


def run_sweep(
    sweep: Sweep,
    out_dir: str | os.PathLike,
    *,
    workers: int | None = None,
    backend: str = "local",
    address: str | None = None,
    retry_failed: bool = False,
    cpus_per_run: int = 1,
    gpus_per_run: float = 0.0,
    dry_run: bool = False,
    echo: Any = print,
    batched_seeds: bool = False,
    only: Sequence[str] = (),
    launch_for: float | None = None,
    allow_other_build: bool = False,
) -> SweepReport:
    """Run every run of `sweep` that is not complete yet (see the module docstring)."""
    if launch_for is not None and (launch_for <= 0 or backend != "local"):
        raise UserError("--launch-for takes minutes > 0 and works with the local backend")
    if backend not in ("local", "ray"):
        raise UserError(f"--backend must be local or ray, got {backend!r}")
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if cpus_per_run < 1 or gpus_per_run < 0:
        raise UserError("--cpus-per-run must be >= 1 and --gpus-per-run >= 0")
    out = Path(out_dir)
    if backend == "ray":  # a worker's working directory is not the driver's
        out = out.resolve()
        if not dry_run:
            _check_reachable(address)
    runs = plan_runs(sweep, out)
    selected = {spec.key for spec in select_runs(runs, only)} if only else None
    out.mkdir(parents=True, exist_ok=True)
    if sweep.text:
        (out / "sweep.toml").write_text(sweep.text)

    report = SweepReport(out, {})
    to_run: list[RunSpec] = []
    previous_runs = _previous_runs(out)
    builds: dict[str, set[str]] = {}  # dataset -> content hashes its finished runs trained on
    for spec in runs:
        state = run_state(spec.run_dir)
        previous = previous_runs.get(spec.key, {})
        if state == "complete":
            report.runs[spec.key] = _outcome(spec, "complete", **_scores(spec.run_dir))
            if content_hash := _trained_on(spec.run_dir):
                builds.setdefault(spec.dataset, set()).add(content_hash)
        elif state == "busy":
            report.runs[spec.key] = _outcome(spec, "busy", error="being trained by another process")
        elif state == "failed" and not retry_failed:
            error = _run_error(spec) or previous.get("error")
            report.runs[spec.key] = _outcome(spec, "failed", error=error)
        else:
            if state == "failed" and not dry_run:
                moved = move_failed_aside(spec.run_dir)
                _log(out, f"{spec.key}: failed run moved to {moved.name}; retrying from scratch")
            report.runs[spec.key] = _outcome(
                spec,
                "pending",
                resume=state == "interrupted",
                **({"attempts": previous["attempts"]} if "attempts" in previous else {}),
            )
            if selected is None or spec.key in selected:
                to_run.append(spec)

    n_workers = workers or _cpu_count()
    n_workers = max(1, min(n_workers, len(to_run) or 1))
    summary = ", ".join(
        f"{report.count(s)} {s}" for s in ("complete", "failed", "busy") if report.count(s)
    )
    from dql.runs import RunDirectory

    # an interrupted run without its checkpoint (another machine) starts over in its directory
    resumed = sum(1 for s in to_run if RunDirectory(s.run_dir).checkpoint_path.exists())
    echo(
        f"sweep {sweep.name}: {len(runs)} runs in {out}"
        + (f"; {summary}" if summary else "")
        + f"; {len(to_run)} to run"
        + (f" (--only {' '.join(only)})" if only else "")
        + (f" ({resumed} resumed from their checkpoints)" if resumed else "")
        + (f" on {n_workers} {backend} workers" if to_run and backend == "local" else "")
        + (" on Ray" if to_run and backend == "ray" else "")
    )
    for key, outcome in report.runs.items():
        if outcome["status"] == "failed":
            echo(f"  kept failed {key}: {outcome.get('error')} (--retry-failed to retry)")
    _check_one_build(to_run, builds, refuse=not (dry_run or allow_other_build), echo=echo)
    own = frozenset(spec.key for spec in to_run) if not dry_run else frozenset()
    _write_status(out, sweep, report, own)
    if dry_run:
        for spec in to_run:
            config = importlib.import_module(spec.module).Config(**spec.config)
            how = (
                "resume"
                if RunDirectory(spec.run_dir).checkpoint_path.exists()
                else "start over"
                if report.runs[spec.key].get("resume")
                else "start"
            )
            echo(
                f"  would {how} {spec.key}: {config.steps} steps, evaluation every "
                f"{config.eval_interval} ({config.eval_episodes} episodes)"
            )
    if dry_run or not to_run:
        return report

    _log(out, f"launching {len(to_run)} runs ({backend})")
    done_count = 0
    started = time.perf_counter()

    def on_done(outcome: dict[str, Any]) -> None:
        nonlocal done_count
        done_count += 1
        attempts = report.runs.get(outcome["key"], {}).get("attempts", 0)
        outcome["attempts"] = attempts + (outcome["status"] != "not started")
        report.runs[outcome["key"]] = outcome
        _write_status(out, sweep, report, own)
        line = _describe(outcome)
        _log(out, line)
        echo(f"[{done_count:>{len(str(len(to_run)))}}/{len(to_run)}] {line}")

    jobs = plan_jobs(to_run, batched_seeds)
    report.launched = len(to_run)
    deadline = time.monotonic() + 60.0 * launch_for if launch_for is not None else None
    runner = (
        LocalBackend(n_workers, cpus_per_run, echo, launch_deadline=deadline)
        if backend == "local"
        else RayBackend(address, cpus_per_run, gpus_per_run)
    )
    if isinstance(runner, RayBackend):
        runner.check_shared_dir(out)
    previous_handler = _sigterm_as_interrupt()
    try:
        runner.run(jobs, on_done)
    except KeyboardInterrupt:
        report.interrupted_by_user = True
        echo("sweep interrupted; running runs saved checkpoints; rerun the sweep to continue")
    finally:
        _restore_sigterm(previous_handler)
        _write_status(out, sweep, report, own)
    elapsed = time.perf_counter() - started
    counts = ", ".join(
        f"{report.count(s)} {s}"
        for s in ("complete", "failed", "interrupted", "busy", "not started")
        if report.count(s)
    )
    cpu = sum(report.runs[k].get("cpu_time") or 0.0 for k in own if "attempts" in report.runs[k])
    cpu_note = f" ({_duration(cpu)} of worker CPU time)" if cpu else ""
    echo(f"sweep {sweep.name} finished in {_duration(elapsed)}{cpu_note}: {counts}")
    _log(out, f"finished in {_duration(elapsed)}{cpu_note}: {counts}")
    return report


def _trained_on(run_dir: str) -> str | None:
    """The content hash of the data a finished run trained on (its config.json)."""
    try:
        saved = json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return saved.get("dataset", {}).get("content_hash")


def _check_one_build(
    to_run: Sequence[RunSpec], builds: dict[str, set[str]], *, refuse: bool, echo: Any
) -> None:
    """Refuse to add runs on a dataset whose local build is not the data the sweep's finished
    runs trained on: a build is bit-identical only on the same kind of CPU (docs/datasets.md),
    and one table should not compare algorithms trained on different data."""
    from dql.data import load_dataset

    for dataset in sorted({spec.dataset for spec in to_run} & builds.keys()):
        try:
            local = load_dataset(dataset).info.content_hash
        except (UserError, OSError):  # not here: the runs themselves report it
            continue
        if local in builds[dataset]:
            continue
        message = (
            f"{dataset} here has content hash {local}, but this sweep's finished runs on it "
            f"trained on {', '.join(sorted(builds[dataset]))}: new runs would train on other data "
            "(a rebuild on another kind of CPU differs, docs/datasets.md)"
        )
        if refuse:
            raise UserError(message + "; --allow-other-build runs them anyway")
        echo(f"warning: {message}")


def _scores(run_dir: str) -> dict[str, Any]:
    from dql.runs import read_json

    result = read_json(Path(run_dir) / "result.json")
    return {"final_score": result.get("final_score"), "best_score": result.get("best_score")}


def _run_error(spec: RunSpec) -> str | None:
    from dql.runs import RunDirectory

    return RunDirectory(spec.run_dir).status().get("error")


def _previous_runs(out: Path) -> dict[str, dict[str, Any]]:
    """Run key -> its entry in the last sweep_status.json (error, attempts so far), or {}."""
    file = out / "sweep_status.json"
    with contextlib.suppress(Exception):
        return dict(json.loads(file.read_text())["runs"])
    return {}


def _describe(outcome: dict[str, Any]) -> str:
    status, key = outcome["status"], outcome["key"]
    wall = f" ({_duration(outcome['wall_time'])}" if outcome.get("wall_time") else ""
    if wall and outcome.get("cpu_time"):
        wall += f", {_duration(outcome['cpu_time'])} CPU"
    wall += ")" if wall else ""
    if status == "complete":
        return (
            f"complete {key}: final score {outcome.get('final_score', float('nan')):.1f}, "
            f"best {outcome.get('best_score', float('nan')):.1f}{wall}"
        )
    error = f": {outcome['error']}" if outcome.get("error") else ""
    return f"{status} {key}{error}{wall}"


def _write_status(
    out: Path, sweep: Sweep, report: SweepReport, own: frozenset[str] = frozenset()
) -> None:
    """Write sweep_status.json: this process's outcomes for the runs it launches (`own`), and
    for every other run what its run directory says now, so that two sweep processes sharing
    `out` do not leave each other's finished runs marked busy."""
    from dql.runs import atomic_write_json

    on_disk = _previous_runs(out)
    for key, outcome in report.runs.items():
        if key not in own:
            report.runs[key] = _current_outcome(outcome, on_disk.get(key))
    atomic_write_json(
        out / "sweep_status.json",
        {
            "sweep": sweep.name,
            "file": str(sweep.path),
            "updated": _now(),
            "counts": {
                s: report.count(s) for s in sorted({r["status"] for r in report.runs.values()})
            },
            "runs": report.runs,
        },
    )


def _current_outcome(seen: dict[str, Any], written: dict[str, Any] | None) -> dict[str, Any]:
    """A run that another process may train: complete or busy as its directory says now, else
    the latest entry written for it that is not a stale busy (another process's error or
    attempts), else what its directory says."""
    state = run_state(seen["run_dir"])
    if state == "complete":
        if seen["status"] == "complete":
            return seen
        return {
            **(written or seen),
            "status": "complete",
            "error": None,
            **_scores(seen["run_dir"]),
        }
    if state == "busy":
        return {**seen, "status": "busy", "error": "being trained by another process"}
    for entry in (written, seen):
        if entry and entry.get("run_dir") == seen["run_dir"] and entry["status"] != "busy":
            return entry
    return {**seen, "status": "pending" if state == "missing" else state, "error": None}


def _log(out: Path, line: str) -> None:
    with open(out / "sweep.log", "a") as f:
        f.write(f"{_now()} {line}\n")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _sigterm_as_interrupt() -> Any:
    """SIGTERM to the sweep (job preemption) stops it like Ctrl-C: workers checkpoint."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def raise_interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, raise_interrupt)


def _restore_sigterm(previous: Any) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------- CLI


def sweep_command(args: SweepArgs) -> int:
    """`dql sweep`: run (or resume) a sweep file; exit 1 unless every run completed."""
    sweep = load_sweep(args.file)
    out = args.out or str(Path("runs") / "sweeps" / sweep.name)
    report = run_sweep(
        sweep,
        out,
        workers=args.workers,
        backend=args.backend,
        address=args.address,
        retry_failed=args.retry_failed,
        cpus_per_run=args.cpus_per_run,
        gpus_per_run=args.gpus_per_run,
        dry_run=args.dry_run,
        batched_seeds=args.batched_seeds,
        only=list(args.only),
        launch_for=args.launch_for,
        allow_other_build=args.allow_other_build,
    )
    if args.dry_run:
        return 0
    if report.interrupted_by_user:
        return 130
    if not report.all_complete:
        print(f"not all runs complete; see {Path(out) / 'sweep_status.json'}", file=sys.stderr)
        return 1
    print(f"tables: dql table {out}")
    return 0


def _worker_entry(argv: Sequence[str]) -> int:
    """`python -m dql.sweep --run-job JSON [--threads N]`: what the local pool launches."""
    parser = argparse.ArgumentParser(prog="python -m dql.sweep")
    parser.add_argument("--run-job", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    return _worker_main(args.run_job, args.threads)


if __name__ == "__main__":  # a local pool's worker, or `python -m dql.sweep FILE` as `dql sweep`
    if sys.argv[1:2] == ["--run-job"]:
        sys.exit(_worker_entry(sys.argv[1:]))
    from dql.cli import main

    sys.exit(main(["sweep", *sys.argv[1:]]))
