"""What a stage logs while it trains: metrics.jsonl and TensorBoard scalars, written by the main process."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


class MetricsLogger:
    """metrics.jsonl (one JSON object per logged step) + TensorBoard scalars. On resume from step S,
    rows past S (logged after the checkpoint the run continues from) are dropped first."""

    def __init__(self, directory: Path, enabled: bool, resume_step: int = 0):
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "metrics.jsonl"
        if path.is_file():
            rows = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            kept = [line for line in rows if _step_of(line) <= resume_step]
            if len(kept) != len(rows):
                tmp = path.with_suffix(".jsonl.tmp")
                tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
                os.replace(tmp, path)
        self.handle = open(path, "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(directory / "tensorboard"))
        except ImportError:  # tensorboard is a dependency, but logging must never stop training
            self.writer = None

    def log(self, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.handle.write(json.dumps(metrics) + "\n")
        self.handle.flush()
        if self.writer is not None:
            for key, value in metrics.items():
                if key != "step":
                    self.writer.add_scalar(f"train/{key}", value, metrics["step"])

    def close(self) -> None:
        if self.enabled:
            self.handle.close()
            if self.writer is not None:
                self.writer.close()


def _step_of(line: str) -> float:
    try:
        return float(json.loads(line).get("step", math.inf))
    except (ValueError, AttributeError):
        return math.inf  # a torn last line is dropped
