"""`record.json` beside a pretraining's `encoder.pth`: what made the file and how to make it again, as
lm-evaluation-harness keeps one JSON record per run. It holds the recipe and its version, the command that reproduces
the file bit for bit (seed and CPU threads included), the software, the images seen, the training time, the sanity
figure (`harness.pretrain.sanity`) and the encoder's sha256.

Kept apart from `encoder.pth`, whose bytes must not depend on wall time: the same pretraining writes the same file.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

RECORD = "record.json"
DEFAULT_COMMAND_OUT = "OUT"


def command(method: str, backbone: str, seed: int, threads: int, recipe: str, epochs: int | None,
            overrides: dict[str, Any], source: str, device: str) -> str:
    """The `harness pretrain` command line of a run (its `--out` left as OUT)."""
    parts = ["python -m harness pretrain", f"--method {method}", f"--arch {backbone}", f"--seed {seed}",
             f"--threads {threads}", f"--device {device}"]
    if recipe != f"{method}_tiny":
        parts.append(f"--recipe {recipe}")
    if source != "fashion-mnist":
        parts.append(f"--data {source}")
    if epochs is not None:
        parts.append(f"--epochs {epochs}")
    parts += [f"--set {k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in overrides.items()]
    return " ".join([*parts, f"--out {DEFAULT_COMMAND_OUT}"])


def logged_steps(log_jsonl: Path) -> list[dict[str, Any]]:
    """The engine's per-step log lines (a line cut by a kill is skipped)."""
    if not log_jsonl.is_file():
        return []
    rows = []
    for line in log_jsonl.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def training_time_s(rows: list[dict[str, Any]]) -> float | None:
    """The training loop's time: the sum of its logged step times (one line per step; data waits included)."""
    times = [r.get("step_time_s") for r in rows]
    return round(sum(t for t in times if t), 1) if times and all(t is not None for t in times) else None


def build(*, method: str, backbone: str, cfg: dict[str, Any], seed: int, threads: int, device: str, source: str,
          epochs: int | None, overrides: dict[str, Any], out_dir: Path, encoder_sha256: str,
          sanity: dict[str, Any] | None, torch_version: str) -> dict[str, Any]:
    rows = logged_steps(out_dir / "log.jsonl")
    batch = cfg["data"]["batch_size"]
    return {
        "method": method, "backbone": backbone, "recipe": cfg["name"], "recipe_version": cfg["version"],
        "epochs": cfg["epochs"], "seed": seed, "threads": threads, "device": device, "data": source,
        "command": command(method, backbone, seed, threads, cfg["name"], epochs, overrides, source, device),
        "images_seen": len(rows) * batch, "steps": len(rows), "training_time_s": training_time_s(rows),
        "sanity": sanity, "file": "encoder.pth", "sha256": encoder_sha256,
        "torch": torch_version, "python": platform.python_version(), "machine": platform.machine(),
    }


def current(path: Path, encoder_sha256: str) -> bool:
    """Whether `path` is a readable record of the encoder with this sha256."""
    try:
        return json.loads(path.read_text()).get("sha256") == encoder_sha256
    except (OSError, ValueError, AttributeError):
        return False


def write(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)
