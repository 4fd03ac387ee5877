"""Training configs: the dataset, the model, and the recipe of a pretrain or fine-tune (distillation, SWA)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from rlprune.config.base import Device, RunName, Seed, Strict


class DataConfig(Strict):
    """Where the data comes from and how it is split and batched."""

    dataset: Literal["cifar10", "imagefolder"] = "cifar10"
    root: str | None = None
    download: bool = True  # fetch CIFAR-10 on first use when it is not found locally
    sha256: str | None = None
    val_size: int = Field(5000, ge=1)  # the hold-out checkpoints and plans are chosen by (never the test split)
    split_seed: Seed = 0
    input_size: int = Field(32, ge=8, le=4096)  # as a checkpoint's sidecar allows
    channels: Literal[1, 3] = 3
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(500, ge=1)
    augment: bool = True
    cutout: int = Field(0, ge=0)  # Cutout square side in pixels on training batches (0 = off; needs augment)
    limit_train: int | None = Field(None, ge=1)
    limit_test: int | None = Field(None, ge=1)


class ModelConfig(Strict):
    """A zoo name (``resnet20``) or an import path (``package.module:factory``) and its keyword arguments."""

    name: str = "resnet20"
    kwargs: dict[str, Any] = Field(default_factory=dict)


class DistillConfig(Strict):
    """Knowledge distillation from a teacher checkpoint: loss = (1-w)·CE + w·T²·KL(student/T ‖ teacher/T).

    ``teacher`` may list several checkpoints: their logits are averaged (an ensemble teacher).
    """

    teacher: str | list[str] | None = None
    temperature: float = Field(4.0, gt=0)
    weight: float = Field(0.5, ge=0, le=1)

    @field_validator("teacher")
    @classmethod
    def _teacher_named(cls, value: str | list[str] | None) -> str | list[str] | None:
        # an empty list or path would silently mean "no teacher": say so instead
        paths = [value] if isinstance(value, str) else value
        if paths is not None and (not paths or not all(paths)):
            raise ValueError("expected a checkpoint path or a non-empty list of them (null: no teacher)")
        return value


class SWAConfig(Strict):
    """Stochastic weight averaging (Izmailov et al., 2018) over the last ``epochs`` epochs of a run.

    The schedule decays to ``lr`` by the start of those epochs and holds it there; the weights at the end of each are
    averaged and the batch-norm statistics re-estimated for the average. The average sits nearer the centre of a wide
    optimum than any single iterate, which generalizes better for the price of a few extra epochs.
    """

    epochs: int = Field(0, ge=0)
    lr: float = Field(0.01, gt=0)


class TrainConfig(Strict):
    """The training recipe shared by pretraining and fine-tuning."""

    epochs: int = Field(30, ge=1)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    schedule: Literal["onecycle", "cosine"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0)
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: bool | Literal["auto"] = "auto"
    distill: DistillConfig = Field(default_factory=DistillConfig)
    swa: SWAConfig = Field(default_factory=SWAConfig)
    eval_every: int = Field(1, ge=1)
    # at most this many optimizer steps per epoch (a fraction of an epoch: smoke runs, CI); None = the whole split
    steps_per_epoch: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainConfig:
        if self.warmup_epochs + self.swa.epochs > self.epochs:
            what = "warmup_epochs + swa.epochs" if self.swa.epochs else "warmup_epochs"
            raise ValueError(f"{what} ({self.warmup_epochs + self.swa.epochs:g}) exceeds epochs ({self.epochs})")
        if self.swa.epochs and self.swa.lr > self.lr:
            raise ValueError(f"swa.lr ({self.swa.lr}) exceeds the peak lr ({self.lr})")
        return self


class PretrainConfig(Strict):
    """``rlprune pretrain``: train a dense model from scratch, or warm-start it from a trained checkpoint.

    ``init_from`` runs another learning-rate cycle on trained weights (a warm restart, as in SGDR): it reaches the
    accuracy of a longer single run for a fraction of the cost, and the checkpoint records where it started. A
    checkpoint of a shallower CIFAR ResNet of the same width is deepened into the configured one first (the deeper
    model starts out computing the shallower one's function; :mod:`rlprune.models.grow`).
    """

    name: RunName
    seed: Seed = 0
    device: Device = "auto"
    threads: int | None = Field(None, ge=1)
    output_dir: str = "runs"
    init_from: str | None = None
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
