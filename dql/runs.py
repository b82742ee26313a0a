"""Run directories: what one training run leaves on disk, written so that a crash loses nothing.

Layout of a run directory:
    config.json     resolved config, seed, package version, git commit, dataset id and hash
    status.json     running | complete | failed | interrupted (+ error, step)
    metrics.jsonl   training metrics every log_interval steps (also metrics.csv)
    eval.jsonl      one row per evaluation with per-episode records (also eval.csv)
    result.json     final and best normalized scores, offline-selected checkpoint
    checkpoints/    last.pt (for --resume), eval_<step>.pt (agent weights at each evaluation)
    tb/             TensorBoard scalars

Every JSON, CSV and checkpoint is written to a temporary file and renamed into place, so a
half-written file is never read back; JSONL rows are appended and a torn last line is skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from dql.errors import UserError

CHECKPOINT = "checkpoints/last.pt"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint with weights_only=True: tensors and plain containers, never code."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: checkpoint not found") from None
    except Exception as exc:
        raise UserError(
            f"{path}: refused to load: not a plain weights checkpoint or corrupt "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
        ) from None


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def read_run_config(path: str | os.PathLike) -> dict[str, Any]:
    """A run directory's config.json, its "config" in the field names of the algorithm's Config
    today (older names upgraded; an algorithm not installed here leaves them as saved)."""
    from dql.config_fields import upgrade_saved_fields
    from dql.registry import load_algorithm

    saved = read_json(Path(path) / "config.json")
    try:
        config_class = load_algorithm(saved["algorithm"]).Config
    except (UserError, KeyError, AttributeError, TypeError):
        return saved
    saved["config"] = upgrade_saved_fields(config_class, saved["config"])
    return saved


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a torn (half-written) last line is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class RunDirectory:
    """Reads and writes the files of one run directory."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def ensure_writable(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write_probe"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise UserError(
                f"output directory {self.path} is not writable: {exc.strerror}"
            ) from None

    # -- status and results
    def status(self) -> dict[str, Any]:
        file = self.path / "status.json"
        return read_json(file) if file.exists() else {"status": "missing"}

    def set_status(self, status: str, **fields: Any) -> None:
        atomic_write_json(self.path / "status.json", {"status": status, **fields})

    def is_complete(self) -> bool:
        return self.status().get("status") == "complete" and (self.path / "result.json").exists()

    def result(self) -> dict[str, Any]:
        return read_json(self.path / "result.json")

    # -- metric rows
    def append_row(self, name: str, row: dict[str, Any]) -> None:
        with open(self.path / f"{name}.jsonl", "a") as f:
            f.write(json.dumps(row, default=float) + "\n")
            f.flush()

    def rows(self, name: str) -> list[dict[str, Any]]:
        return read_jsonl(self.path / f"{name}.jsonl")

    def truncate_rows(self, name: str, max_step: int) -> None:
        """Drop rows logged after the checkpoint a resumed run restarts from."""
        rows = [r for r in self.rows(name) if r.get("step", 0) <= max_step]
        text = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write_bytes(self.path / f"{name}.jsonl", text.encode())

    def write_csv(self, name: str) -> None:
        rows = [
            {k: v for k, v in r.items() if not isinstance(v, (list, dict))} for r in self.rows(name)
        ]
        atomic_write_bytes(
            self.path / f"{name}.csv", pd.DataFrame(rows).to_csv(index=False).encode()
        )

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT
