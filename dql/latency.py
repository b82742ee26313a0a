"""Action-selection latency: milliseconds per `agent.act` call at batch 1 (one robot, one step)
and batched, on the agent's device and, when a GPU is present, on the other device too.

Wall-clock medians (torch.utils.benchmark) over repeated calls after a warm-up, on random normalised observations; the
call includes the host<->device copies `act` does, as a deployed controller pays them. On a
shared machine these numbers are noisy: compare within one measurement, not across machines.
`dql latency RUN_DIR [RUN_DIR ...]` writes them to RUN_DIR/latency.json with the agent's speed
knobs (number of candidate actions, diffusion steps) so that latency can be read next to score;
the perturbation panel measures them beside its scores. Training does not: a benchmark inside
every run would cost each run time and put a noisy number among its results.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from dql.cli import LatencyArgs

# Settings that trade action quality for speed, recorded when an agent (or its config) has them:
# Diffusion-QL's candidates and diffusion steps, BCQ's sampled actions, Diffuser's planning.
SPEED_KNOBS = (
    "num_candidates",
    "n_timesteps",
    "eval_sampled_actions",
    "num_plans",
    "diffusion_steps",
    "horizon",
    "replan_interval",
)


def agent_device(agent: Any) -> str:
    """The device an agent acts on: agent.device, agent.config.device, or its first network's."""
    for value in (
        getattr(agent, "device", None),
        getattr(getattr(agent, "config", None), "device", None),
    ):
        if value is not None and str(value) != "auto":
            return str(torch.device(value))
    for value in vars(agent).values():
        if isinstance(value, torch.nn.Module):
            for parameter in value.parameters():
                return str(parameter.device)
    return "cpu"


def speed_knobs(agent: Any) -> dict[str, Any]:
    """Values of SPEED_KNOBS found on the agent or its config."""
    config = getattr(agent, "config", None)
    found = {}
    for name in SPEED_KNOBS:
        for holder in (agent, config):
            value = getattr(holder, name, None) if holder is not None else None
            if isinstance(value, (int, float, str, bool)):
                found[name] = value
                break
    return found


def time_act(
    agent: Any,
    observation_dim: int,
    batch_size: int,
    *,
    min_seconds: float = 0.2,
    seed: int = 0,
) -> dict[str, float]:
    """Median and 90th percentile milliseconds of one `agent.act` call on a (batch_size, obs)
    batch, by torch.utils.benchmark's `blocked_autorange` after one warm-up call: blocks of
    calls for at least `min_seconds` (a planner that takes seconds per call is timed twice)."""
    from torch.utils.benchmark import Timer

    observations = np.random.default_rng(seed).standard_normal((batch_size, observation_dim))
    observations = observations.astype(np.float32)
    timer = Timer(
        "np.asarray(agent.act(observations))",  # host arrays: a device agent is synced
        globals={"np": np, "agent": agent, "observations": observations},
        num_threads=torch.get_num_threads(),  # the Timer's default is one thread
    )
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        agent.act(observations)  # warm-up: lazy initialisation, allocator and kernel caches
        measurement = timer.blocked_autorange(min_run_time=min_seconds)
    ms = np.asarray(measurement.times) * 1000  # per call, averaged within each block
    median = float(measurement.median * 1000)
    return {
        "ms_per_call": median,
        "ms_per_action": median / batch_size,
        "p90_ms_per_call": float(np.percentile(ms, 90)),
        "calls": len(measurement.raw_times) * measurement.number_per_run,
    }


def measure(
    agent: Any,
    observation_dim: int,
    *,
    batch_sizes: Sequence[int] = (1, 10),
    rebuild: Callable[[str], Any] | None = None,
    **timing: Any,
) -> dict[str, Any]:
    """Latency of `agent.act` per device and batch size, JSON-ready.

    `rebuild(device)` returns a copy of the agent on another device; with it, a CUDA agent is
    also timed on CPU and a CPU agent on CUDA when a GPU is present. Never raises: a failure is
    recorded under "error" (one device failing must not lose the others' numbers)."""
    device = agent_device(agent)
    out: dict[str, Any] = {
        "knobs": speed_knobs(agent),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "devices": {},
    }
    agents = [(device, lambda: agent)]
    if rebuild is not None:
        other = (
            "cpu" if device.startswith("cuda") else ("cuda" if torch.cuda.is_available() else None)
        )
        if other is not None:
            agents.append((other, lambda: rebuild(other)))
    for name, get in agents:
        try:
            timed = get()
            out["devices"][name] = {
                str(b): time_act(timed, observation_dim, b, **timing) for b in batch_sizes
            }
            if name.startswith("cuda"):
                out["gpu"] = torch.cuda.get_device_name(torch.device(name))
        except Exception as exc:  # noqa: BLE001 -- recorded, see docstring
            out["devices"][name] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def ms_per_action(
    latency: dict[str, Any], device: str | None = None, batch_size: int = 1
) -> float | None:
    """One number from a `measure` result: ms per action at `batch_size` on `device` (default:
    the first device measured)."""
    devices = latency.get("devices", {})
    if not devices:
        return None
    entry = devices.get(device) if device else next(iter(devices.values()))
    row = (entry or {}).get(str(batch_size))
    return None if row is None else row["ms_per_action"]


def _cpu_name() -> str | None:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or None


def latency_command(args: LatencyArgs) -> int:
    """`dql latency`: time each run's trained agent, write RUN_DIR/latency.json."""
    from dql.errors import UserError
    from dql.export import load_run
    from dql.runs import atomic_write_json

    if not args.run_dirs:
        raise UserError("give at least one RUN_DIR")

    for run_dir in args.run_dirs:
        run = load_run(run_dir, checkpoint=args.checkpoint, device=args.device)

        def on_device(other: str, run_dir: str = run_dir) -> Any:
            return load_run(run_dir, checkpoint=args.checkpoint, device=other).agent

        latency = measure(run.agent, run.info.observation_dim, rebuild=on_device)
        latency["checkpoint"] = run.checkpoint
        atomic_write_json(Path(run_dir) / "latency.json", latency)
        device = next(iter(latency["devices"]), args.device)
        print(
            f"{run_dir}: {ms_per_action(latency, batch_size=1):.3f} ms per action at batch 1, "
            f"{ms_per_action(latency, batch_size=10):.3f} at batch 10 ({device}); "
            f"wrote latency.json"
        )
    return 0
