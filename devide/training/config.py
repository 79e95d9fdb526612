"""The typed config of ``devide train``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from devide.config import StageConfig


class TrainConfig(StageConfig):
    """Config of ``devide train`` (one process, or every process of ``accelerate launch``)."""

    # inputs
    dataset: Path = Field(description="`devide prepare-data` artifact folder (dataset/, entities.json)")
    image_root: Path | None = Field(
        default=None, description="folder the dataset's image paths are relative to (default: prepare-data's root)")
    knowledge: Path | None = Field(
        default=None, description="`devide harmonize` artifact folder or its knowledge.json ({entity: {aspect: [...]}})")
    knowledge_fallback: Literal["none", "definitions"] = Field(
        default="none", description="without `knowledge`: fail (none) or use the vocabulary definitions")
    vocabulary: Path | None = Field(default=None, description="entity vocabulary YAML (default: the packaged one)")
    init_from: Path | None = Field(default=None, description="start from a saved DeViDe model folder")
    # model
    entities: list[str] | None = Field(
        default=None, description="entity ids the model is trained on (default: every vocabulary entity)")
    exclude_entities: list[str] = Field(
        default_factory=list, description="entity ids kept out of training (held out for zero-shot evaluation)")
    model: dict[str, Any] = Field(
        default_factory=dict,
        description="DevideConfig fields, e.g. {vision_preset: tiny, freeze_text: true, use_pta: false}")
    # optimisation
    seed: int = Field(default=42, description="seed of the model init, data order and augmentation")
    batch_size: int = Field(default=32, ge=1, description="images per process per micro-batch")
    gradient_accumulation_steps: int = Field(default=1, ge=1, description="micro-batches per optimizer step")
    epochs: float = Field(default=1.0, gt=0, description="passes over the training split (when max_steps is unset)")
    max_steps: int | None = Field(default=None, ge=1, description="optimizer steps (overrides epochs)")
    learning_rate: float = Field(default=1e-4, gt=0, description="peak AdamW learning rate")
    weight_decay: float = Field(default=0.05, ge=0, description="AdamW weight decay (not on biases and norms)")
    adam_betas: tuple[float, float] = Field(default=(0.9, 0.98), description="AdamW betas")
    adam_eps: float = Field(default=1e-6, gt=0, description="AdamW epsilon")
    warmup_steps: int | None = Field(default=None, ge=0, description="linear warm-up steps (default: warmup_ratio)")
    warmup_ratio: float = Field(default=0.05, ge=0, le=1, description="warm-up as a fraction of all steps")
    max_grad_norm: float | None = Field(default=1.0, description="gradient clipping norm (null: no clipping)")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        default="auto", description="auto: the accelerate launch config, else bf16 where the GPU supports it")
    deterministic: bool = Field(default=False, description="torch deterministic algorithms (slower on GPU)")
    # data
    train_split: str = Field(default="train", description="split of the dataset to train on")
    augment: bool = Field(default=True, description="CXR augmentation (crop, small rotation, intensity)")
    hflip: float = Field(default=0.0, ge=0, le=1, description="horizontal flip probability (laterality matters)")
    workers: int = Field(default=2, ge=0, description="DataLoader worker processes per training process")
    # checkpoints and evaluation
    checkpoint_every: int = Field(default=500, ge=1, description="save_state every N optimizer steps")
    keep_checkpoints: int = Field(default=2, ge=1, description="checkpoints kept (oldest deleted)")
    keep_checkpoints_at_end: bool = Field(default=False, description="keep checkpoints/ in the final artifact")
    resume: str = Field(
        default="latest", description="latest (newest checkpoint in the work folder, if any), never, or a checkpoint folder")
    eval_split: str | None = Field(default="validate", description="held-out split for zero-shot validation")
    eval_every: int = Field(default=0, ge=0, description="validate every N steps (0: only at the end)")
    eval_max_images: int = Field(default=512, ge=1, description="validation images (first N of the split)")
    log_every: int = Field(default=10, ge=1, description="log losses, lr and throughput every N steps")
    tensorboard: bool = Field(default=True, description="log to tensorboard (logs/ in the artifact)")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.resume not in ("latest", "never") and not Path(self.resume).exists():
            raise ValueError(f"resume must be 'latest', 'never' or an existing checkpoint folder, got {self.resume!r}")
        return self


VOLATILE_FIELDS = ("workers", "resume", "log_every", "tensorboard", "eval_every", "eval_max_images")
"""Fields that do not change the trained weights: changing them keeps the partial work folder (and resumes)."""
