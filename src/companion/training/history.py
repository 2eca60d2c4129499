"""What a training run measured, step by step and evaluation by evaluation (`train` returns it)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class History:
    """What a run measured: per step (loss, lr, speed, time) and per evaluation (val loss)."""

    step: list[int] = field(default_factory=list)  # steps completed (1-based)
    train_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)  # before clipping
    tokens_per_s: list[float] = field(default_factory=list)  # training tokens / step time
    wall_time: list[float] = field(default_factory=list)  # seconds since the run started
    eval_step: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    eval_wall_time: list[float] = field(default_factory=list)
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        """Inverse of `to_dict`."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def save_json(self, path: str | Path) -> None:
        """Write the history as JSON."""
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load_json(cls, path: str | Path) -> History:
        """Read a history written by `save_json`."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    @property
    def best_val_loss(self) -> float:
        """Lowest validation loss seen (inf when there was no evaluation)."""
        return min(self.val_loss, default=math.inf)

    def __repr__(self) -> str:
        last = f"train {self.train_loss[-1]:.4f}" if self.train_loss else "no steps"
        val = f", val {self.val_loss[-1]:.4f}" if self.val_loss else ""
        return f"History({len(self.step)} steps, {last}{val})"
