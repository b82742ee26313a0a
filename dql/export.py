"""Trained policies out of run directories: load an agent back, export it as TorchScript.

`load_run(run_dir)` rebuilds the agent of a run from its config.json and a checkpoint, together
with what evaluating it needs (dataset info, observation normalizer, reference scores), without
the dataset on disk. `export_policy(run, path)` writes the policy as one TorchScript file that
plain `torch.jit.load` reads, with no import of this package:

    policy = torch.jit.load("policy.pt")
    actions = policy(observations)           # raw env observations (B, obs_dim) or (obs_dim,)
    actions = policy(observations, seed=7)   # stochastic policies: seeds torch's RNG first

The module normalises observations with the dataset's statistics, runs the agent's action
selection and clamps to the action box; CPU only. Metadata (algorithm, dataset, dims, checkpoint,
normalizer) are in the file's extra file "dql.json" (`torch.jit.load(path, _extra_files=...)`).

Where the policy comes from, first match wins:
1. `agent.policy_module()`: an nn.Module mapping normalised observations (B, obs_dim) to actions
   that draws its noise from torch's global RNG in the same order as `agent.act` (the hook an
   algorithm with its own action selection provides: Diffusion-QL, BCQ);
2. `agent.actor.deterministic` (CQL), else `agent.actor` (TD3+BC, IQL, BC).
Diffuser replans every few steps and keeps its plan between calls: it is not a stateless
module and is not exported.
`dql export RUN_DIR --format onnx` (`export_onnx`) writes the same wrapper as ONNX for ONNX
Runtime (batch (B, obs_dim) in, actions out), checked the same way. Policies whose actions
sample noise (Diffusion-QL's candidates, BCQ's VAE samples) are refused, found by their actions
differing between two seeds: ONNX Runtime's random operators cannot draw torch's noise, so such
an export could not be checked against `agent.act`; TorchScript keeps the seed and exports them.
The module is traced (loops unrolled, batch size dynamic). Every export is checked against
`agent.act` on random observations, two batch sizes and two seeds; one that does not reproduce
the agent is refused, so a wrong guess in 2 cannot pass silently.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from dql.data import DatasetInfo, ObservationNormalizer, task_name
from dql.errors import UserError
from dql.runs import read_json, safe_torch_load

if TYPE_CHECKING:
    from dql.cli import ExportArgs

EXPORT_TOLERANCE = 1e-5  # max |exported - agent.act| / max_action accepted by the check


# --------------------------------------------------------------------------- loading runs


@dataclass
class TrainedRun:
    """An agent rebuilt from a run directory, with what evaluating it needs."""

    path: Path
    algorithm: str
    config: dict[str, Any]  # config.json "config" (the flags the run was trained with)
    info: DatasetInfo
    normalizer: ObservationNormalizer
    ref_scores: tuple[float, float]
    agent: Any
    checkpoint: str  # file the weights came from, relative to the run directory
    overrides: dict[str, Any]
    device: str

    @property
    def observation_dim(self) -> int:
        return self.info.observation_dim

    @property
    def action_dim(self) -> int:
        return self.info.action_dim

    @property
    def max_action(self) -> float:
        return float(np.max(self.info.action_high))

    @property
    def label(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in self.overrides.items())
        return f"{self.algorithm} {task_name(self.config['dataset'])} s{self.config['seed']}{extra}"


def checkpoint_file(run_dir: Path, checkpoint: str) -> tuple[Path, str]:
    """(path, key) of a checkpoint name: last, best, selected (offline choice), or a step."""
    if checkpoint == "last":
        return run_dir / "checkpoints" / "last.pt", "agent"
    if checkpoint in ("best", "selected"):
        result_file = run_dir / "result.json"
        if not result_file.exists():
            raise UserError(f"{run_dir}: no result.json (unfinished run); use --checkpoint last")
        step = read_json(result_file).get(f"{checkpoint}_step")
        if step is None:
            raise UserError(f"{run_dir}: result.json has no {checkpoint}_step")
    elif re.fullmatch(r"\d+", checkpoint):
        step = int(checkpoint)
    else:
        raise UserError(f"--checkpoint must be last, best, selected or a step, got {checkpoint!r}")
    path = run_dir / "checkpoints" / f"eval_{step}.pt"
    if not path.exists():
        kept = sorted(
            int(p.stem.removeprefix("eval_")) for p in run_dir.glob("checkpoints/eval_*.pt")
        )
        raise UserError(
            f"{path}: no checkpoint for step {step}; steps kept: "
            f"{', '.join(map(str, kept)) or 'none'}"
        )
    return path, ""


def load_run(
    run_dir: str | Path,
    *,
    checkpoint: str = "last",
    device: str = "cpu",
    agent_cls: type | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainedRun:
    """Rebuild the agent of `run_dir` on `device` from one of its checkpoints.

    The agent class comes from the registry entry of the run's algorithm (or `agent_cls`); its
    config is the module's `Config` filled from config.json, with `overrides` (e.g.
    num_candidates) applied before the agent is built."""
    from dql.config_fields import upgrade_saved_fields
    from dql.registry import agent_class, load_algorithm
    from dql.training import TrainConfig

    path = Path(run_dir)
    config_file = path / "config.json"
    if not config_file.exists():
        raise UserError(f"{path}: not a run directory (no config.json)")
    saved = read_json(config_file)
    config_cls: type = TrainConfig
    if agent_cls is None:
        module = load_algorithm(saved["algorithm"])
        agent_cls = agent_class(module)
        config_cls = getattr(module, "Config", TrainConfig)
    fields = config_cls.__dataclass_fields__
    overrides = dict(overrides or {})
    unknown = sorted(k for k in overrides if k not in fields)
    if unknown:
        knobs = ", ".join(sorted(set(fields) - set(TrainConfig.__dataclass_fields__)))
        raise UserError(
            f"{saved['algorithm']} has no setting {', '.join(unknown)}; its own settings: "
            f"{knobs or 'none'}"
        )
    saved["config"] = upgrade_saved_fields(config_cls, saved["config"])
    values = {k: v for k, v in saved["config"].items() if k in fields}
    values.update(overrides, device=device)
    config = config_cls(**values)
    info = DatasetInfo.from_dict(saved["dataset"])
    agent = agent_cls(info.observation_dim, info.action_dim, float(info.action_high[0]), config)
    file, key = checkpoint_file(path, checkpoint)
    state = safe_torch_load(file, map_location=device)
    try:
        agent.load_state_dict(state[key] if key else state)
    except (RuntimeError, KeyError, ValueError) as exc:
        detail = str(exc).splitlines()[0][:200]
        raise UserError(
            f"{file}: the weights do not fit the agent built with {overrides or 'the saved config'}"
            f" ({detail}); settings that change the networks cannot be overridden"
        ) from None
    return TrainedRun(
        path=path,
        algorithm=saved["algorithm"],
        config=saved["config"],
        info=info,
        normalizer=ObservationNormalizer.from_state_dict(saved["normalizer"]),
        ref_scores=tuple(saved["ref_scores"]),
        agent=agent,
        checkpoint=str(file.relative_to(path)),
        overrides=overrides,
        device=device,
    )


# --------------------------------------------------------------------------- policy modules


class _CallMethod(nn.Module):
    def __init__(self, module: nn.Module, method: str) -> None:
        super().__init__()
        self.module, self.method = module, method

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return getattr(self.module, self.method)(observations)


def policy_module(agent: Any) -> nn.Module:
    """The agent's action selection as an nn.Module on normalised observations (see the module
    docstring for the order in which it is looked for)."""
    if callable(getattr(agent, "policy_module", None)):
        return agent.policy_module()
    actor = getattr(agent, "actor", None)
    if isinstance(actor, nn.Module):
        return _CallMethod(actor, "deterministic") if hasattr(actor, "deterministic") else actor
    raise UserError(
        f"cannot export {type(agent).__name__}: it has no policy_module() method and no `actor` "
        "network; add policy_module() returning an nn.Module from normalised observations to actions"
    )


def frozen_policy(run: TrainedRun) -> nn.Module:
    """A CPU copy of the run's policy module in eval mode without gradients (what is exported)."""
    if run.device != "cpu":
        raise UserError("export runs on CPU; load the run with device='cpu'")
    return copy.deepcopy(policy_module(run.agent)).to("cpu").eval().requires_grad_(False)


class ExportedPolicy(nn.Module):
    """Raw observations -> normalise -> policy -> clamp; scripted around the traced policy."""

    def __init__(
        self,
        policy: nn.Module,
        normalizer: ObservationNormalizer,
        action_dim: int,
        max_action: float,
    ) -> None:
        super().__init__()
        self.policy = policy
        self.register_buffer("mean", torch.as_tensor(normalizer.mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(normalizer.std, dtype=torch.float32))
        self.observation_dim = int(normalizer.mean.shape[0])
        self.action_dim = action_dim
        self.max_action = float(max_action)

    def forward(self, observations: torch.Tensor, seed: int = -1) -> torch.Tensor:
        if seed >= 0:
            torch.manual_seed(seed)
        single = observations.dim() == 1
        x = observations.to(torch.float32)
        if single:
            x = x.unsqueeze(0)
        actions = self.policy((x - self.mean) / self.std)
        actions = actions.clamp(-self.max_action, self.max_action)
        return actions.squeeze(0) if single else actions


def build_exported(run: TrainedRun) -> torch.jit.ScriptModule:
    """Trace the agent's policy on CPU and script the normalising wrapper around it."""
    policy = frozen_policy(run)
    example = torch.zeros(2, run.observation_dim)
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            traced = torch.jit.trace(policy, example, check_trace=False)
    except Exception as exc:
        raise UserError(
            f"cannot trace the {run.algorithm} policy ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160]}); the agent should provide policy_module()"
        ) from None
    return torch.jit.script(ExportedPolicy(traced, run.normalizer, run.action_dim, run.max_action))


def check_export(
    module: Callable[[torch.Tensor, int], torch.Tensor],
    run: TrainedRun,
    *,
    batch_sizes: Sequence[int] = (1, 7),
    seeds: Sequence[int] = (0, 1),
) -> float:
    """Largest |module(obs, seed) - clip(agent.act(normalize(obs)))| over random observations
    (dataset mean +- 2 std), relative to max_action; both calls start from the same torch seed."""
    rng = np.random.default_rng(0)
    norm, m = run.normalizer, run.max_action
    worst = 0.0
    for batch in batch_sizes:
        raw = norm.mean + norm.std * rng.uniform(-2, 2, (batch, run.observation_dim))
        raw = raw.astype(np.float32)
        for seed in seeds:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.manual_seed(seed)
                expected = np.clip(run.agent.act(norm(raw)), -m, m)
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                got = module(torch.as_tensor(raw), seed).numpy()
            if got.shape != expected.shape:
                return float("inf")
            worst = max(worst, float(np.abs(got - expected).max()) / m)
    return worst


def export_policy(run: TrainedRun, out: str | Path, *, check: bool = True) -> dict[str, Any]:
    """Write `run`'s policy to `out` as TorchScript; return its metadata (+ check error)."""
    module = build_exported(run)  # refuses a run loaded on a GPU
    error = check_export(module, run) if check else None
    if error is not None and not error <= EXPORT_TOLERANCE:
        raise UserError(
            f"the exported {run.algorithm} policy does not reproduce agent.act (max error "
            f"{error:.3g} x max_action); the agent should provide policy_module()"
        )
    meta = {
        "format": "dql-torchscript-policy-1",
        **_metadata(run, error),
        "call": "policy(observations[, seed]) -> actions; raw observations, CPU float32",
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(module, str(out), _extra_files={"dql.json": json.dumps(meta, indent=2)})
    return meta


def samples_noise(run: TrainedRun) -> bool:
    """Whether the agent's actions depend on torch's RNG (two seeds, same observations)."""
    observations = run.normalizer(np.tile(run.normalizer.mean, (4, 1)).astype(np.float32))
    actions = []
    for seed in (0, 1):
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            actions.append(np.asarray(run.agent.act(observations)))
    return not np.array_equal(actions[0], actions[1])


def export_onnx(run: TrainedRun, out: str | Path, *, check: bool = True) -> dict[str, Any]:
    """Write `run`'s policy to `out` as ONNX (raw observations (batch, obs_dim) -> actions,
    normalisation and clamp inside; metadata in the model's metadata_props "dql.json"), checked
    against agent.act with ONNX Runtime. Policies that sample noise are refused: ONNX Runtime's
    random operators cannot draw torch's noise, so such an export could not be checked."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise UserError(
            f"--format onnx needs onnx, onnxscript and onnxruntime ({exc.name} is missing): "
            'pip install -e ".[export]"'
        ) from None
    policy = frozen_policy(run)  # refuses a run loaded on a GPU
    if samples_noise(run):
        raise UserError(
            f"the {run.algorithm} policy samples noise at every action (its actions differ "
            "between seeds); ONNX Runtime cannot draw torch's noise, so an ONNX export could not "
            "be checked against agent.act: use --format torchscript, which keeps the seed"
        )
    module = ExportedPolicy(policy, run.normalizer, run.action_dim, run.max_action).eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1)
    exporter_log = logging.getLogger("torch.onnx")  # "torchvision is not installed" notes
    level = exporter_log.level
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            exporter_log.setLevel(logging.ERROR)
            torch.onnx.export(
                module,
                (torch.zeros(2, run.observation_dim),),
                str(out),
                input_names=["observations"],
                output_names=["actions"],
                dynamic_shapes={"observations": {0: batch}},
                dynamo=True,
                verbose=False,
            )
    except Exception as exc:  # the exporter's own errors; the user learns what and where
        raise UserError(
            f"cannot export the {run.algorithm} policy to ONNX ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160]}); --format torchscript may still work"
        ) from None
    finally:
        exporter_log.setLevel(level)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])

    def run_session(observations: torch.Tensor, seed: int) -> torch.Tensor:
        return torch.as_tensor(session.run(None, {"observations": observations.numpy()})[0])

    error = check_export(run_session, run) if check else None
    if error is not None and not error <= EXPORT_TOLERANCE:
        out.unlink()
        raise UserError(
            f"the ONNX {run.algorithm} policy does not reproduce agent.act (max error "
            f"{error:.3g} x max_action); --format torchscript may"
        )
    meta = {**_metadata(run, error), "format": "dql-onnx-policy-1"}
    meta["call"] = "session.run(None, {'observations': (batch, obs_dim) float32})[0] -> actions"
    model = onnx.load(str(out))
    onnx.helper.set_model_props(model, {"dql.json": json.dumps(meta, indent=2)})
    onnx.save(model, str(out))
    return meta


def _metadata(run: TrainedRun, error: float | None) -> dict[str, Any]:
    return {
        "algorithm": run.algorithm,
        "dataset": run.config["dataset"],
        "checkpoint": run.checkpoint,
        "run_dir": str(run.path),
        "observation_dim": run.observation_dim,
        "action_dim": run.action_dim,
        "max_action": run.max_action,
        "normalizer": run.normalizer.state_dict(),
        "overrides": run.overrides,
        "check_max_error": error,
    }


def load_exported(path: str | Path) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """An exported policy and its metadata (plain torch.jit.load does the same)."""
    extra = {"dql.json": ""}
    module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return module, json.loads(extra["dql.json"])


# --------------------------------------------------------------------------- command


def export_command(args: ExportArgs) -> int:
    """`dql export`: write a run's policy as TorchScript, checked against agent.act."""
    run = load_run(args.run_dir, checkpoint=args.checkpoint, overrides=parse_settings(args.set))
    onnx = args.format == "onnx"
    out = Path(args.out) if args.out else run.path / ("policy.onnx" if onnx else "policy.pt")
    write = export_onnx if onnx else export_policy
    meta = write(run, out, check=not args.no_check)
    checked = (
        "not checked"
        if meta["check_max_error"] is None
        else f"matches agent.act to {meta['check_max_error']:.1e} x max_action"
    )
    print(
        f"wrote {out}: {run.algorithm} policy ({run.checkpoint}), observations "
        f"{run.observation_dim} -> actions {run.action_dim}; {checked}"
    )
    return 0


def parse_value(text: str) -> Any:
    """A setting's value: JSON where it parses (10, 0.5, true), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_settings(items: Sequence[str]) -> dict[str, Any]:
    """NAME=VALUE strings -> dict (dashes in names become underscores)."""
    settings: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UserError(f"settings are NAME=VALUE, got {item!r}")
        settings[name.replace("-", "_")] = parse_value(value)
    return settings
