"""Training metrics to the trackers TRL and accelerate users read: `report_to: [tensorboard, wandb]` in a recipe
(`--report-to`). shortest and dpo hand it to TRL's trainers (transformers' `report_to`); RL logs each iteration's
metrics and validation scores itself, from the main process, beside its metrics.jsonl (which stays the record)."""

from __future__ import annotations

import importlib.util
import shutil
import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from l2s.atomic import write_text_atomic

Tracker = Literal["tensorboard", "wandb"]
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}
# recipe fields that only say where metrics are also logged: never part of what makes two runs the same run
LOGGING_FIELDS = ("report_to",)


class ReportingRecipe(BaseModel):
    """The `report_to` setting a trained method's recipe takes."""

    report_to: list[Tracker] = Field(
        default_factory=list, description="trackers to log training metrics to: tensorboard, wandb (none by default)"
    )

    @field_validator("report_to")
    @classmethod
    def _installed(cls, trackers: list[str]) -> list[str]:
        for tracker in trackers:  # refused at load, before any weights, rather than dropped at the first log
            if importlib.util.find_spec(PACKAGES[tracker]) is None:
                raise ValueError(f"report_to {tracker}: the {PACKAGES[tracker]} package is not installed")
        return trackers


class MetricsReport:
    """RL's per-iteration scalars to TensorBoard (`RUN_DIR/tensorboard`) and Weights & Biases. After a resume the
    TensorBoard log drops what it had after the resumed iteration (`purge_step`), so nothing is logged twice, and
    the W&B run continues; a fresh run (no --resume) starts a new W&B run and a new TensorBoard log."""

    def __init__(self, trackers: list[str], run_dir: Path, name: str, config: dict, start_iteration: int):
        self.writer = self.wandb = None
        if "tensorboard" in trackers:
            from torch.utils.tensorboard import SummaryWriter

            if start_iteration == 0:  # (a fresh run over an old one's directory)
                shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_iteration + 1)
        if "wandb" in trackers:
            import wandb

            id_file = run_dir / "wandb_id"
            if start_iteration == 0 or not id_file.is_file():
                write_text_atomic(id_file, f"{run_dir.name}-{uuid.uuid4().hex[:8]}")
            run_id = id_file.read_text()
            self.wandb = wandb.init(project="long2short", name=name, id=run_id, resume="allow", config=config)

    def log(self, scalars: dict, iteration: int) -> None:
        flat = dict(_flatten(scalars))
        if self.writer:
            for key, value in flat.items():
                self.writer.add_scalar(key, value, iteration)
            self.writer.flush()
        if self.wandb:
            self.wandb.log(flat, step=iteration)

    def close(self) -> None:
        if self.writer:
            self.writer.close()
        if self.wandb:
            self.wandb.finish()


def _flatten(values: dict, prefix: str = ""):
    """Numbers only, nested keys joined by '/' (accuracy_by_level/3)."""
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{prefix}{key}", value
