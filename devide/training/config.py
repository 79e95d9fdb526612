"""The typed config of ``devide train``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from devide.config import StageConfig

# Fields whose default differs between pretraining and fine-tuning: constraints and help live here once,
# each config states only its default (pydantic does not merge a redeclared field with its parent's).
Seed = Annotated[int, Field(description="seed of the model init, data order and augmentation")]
BatchSize = Annotated[int, Field(ge=1, description="images per process per micro-batch")]
Epochs = Annotated[float, Field(gt=0, description="passes over the training images (when max_steps is unset)")]
LearningRate = Annotated[float, Field(gt=0, description="peak AdamW learning rate")]
WeightDecay = Annotated[float, Field(ge=0, description="AdamW weight decay (not on biases and norms)")]
AdamBetas = Annotated[tuple[float, float], Field(description="AdamW betas")]
AdamEps = Annotated[float, Field(gt=0, description="AdamW epsilon")]
WarmupRatio = Annotated[float, Field(ge=0, le=1, description="warm-up as a fraction of all steps")]
CheckpointEvery = Annotated[int, Field(ge=1, description="save_state every N optimizer steps")]
KeepCheckpoints = Annotated[int, Field(ge=1, description="checkpoints kept (oldest deleted)")]


class OptimisationConfig(StageConfig):
    """What every run of the Accelerate trainer shares (``devide train`` and ``devide finetune``)."""

    seed: Seed = 42
    batch_size: BatchSize = 32
    gradient_accumulation_steps: int = Field(
        default=1, ge=1, description="micro-batches per optimizer step (sums gradients only: contrastive losses "
                                     "get no extra negatives; prefer a larger batch_size with gradient_checkpointing)")
    epochs: Epochs = 1.0
    max_steps: int | None = Field(default=None, ge=1, description="optimizer steps (overrides epochs)")
    learning_rate: LearningRate = 1e-4
    weight_decay: WeightDecay = 0.05
    adam_betas: AdamBetas = (0.9, 0.98)
    adam_eps: AdamEps = 1e-6
    warmup_steps: int | None = Field(default=None, ge=0, description="linear warm-up steps (default: warmup_ratio)")
    warmup_ratio: WarmupRatio = 0.05
    max_grad_norm: float | None = Field(default=1.0, description="gradient clipping norm (null: no clipping)")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        default="auto", description="auto: the accelerate launch config, else bf16 where the GPU supports it")
    deterministic: bool = Field(default=False, description="torch deterministic algorithms (slower on GPU)")
    augment: bool = Field(default=True, description="CXR augmentation (crop, small rotation, intensity; masks follow)")
    hflip: float = Field(default=0.0, ge=0, le=1, description="horizontal flip probability (laterality matters)")
    workers: int = Field(default=2, ge=0, description="DataLoader worker processes per training process")
    checkpoint_every: CheckpointEvery = 500
    keep_checkpoints: KeepCheckpoints = 2
    keep_checkpoints_at_end: bool = Field(default=False, description="keep checkpoints/ in the final artifact")
    log_every: int = Field(default=10, ge=1, description="log losses, lr and throughput every N steps")
    tensorboard: bool = Field(default=True, description="log to tensorboard (logs/ in the artifact or per variant)")


class TrainConfig(OptimisationConfig):
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
    gradient_checkpointing: bool = Field(
        default=False, description="activation checkpointing in both towers (ViT-B at 512 px, unfrozen text tower): "
                                   "activations recomputed in the backward pass: less memory, one more forward per "
                                   "layer, identical loss")
    # data
    train_split: str = Field(default="train", description="split of the dataset to train on")
    # checkpoints and validation
    resume: str = Field(
        default="latest", description="latest (newest checkpoint in the work folder, if any), never, or a checkpoint folder")
    eval_split: str | None = Field(default="validate", description="held-out split for zero-shot validation")
    eval_every: int = Field(default=0, ge=0, description="validate every N steps (0: only at the end)")
    eval_max_images: int = Field(default=512, ge=1,
                                 description="validation images, spread over subjects (seeded round robin)")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.resume not in ("latest", "never") and not Path(self.resume).exists():
            raise ValueError(f"resume must be 'latest', 'never' or an existing checkpoint folder, got {self.resume!r}")
        return self


VOLATILE_FIELDS = ("workers", "resume", "log_every", "tensorboard", "eval_every", "eval_max_images",
                   "gradient_checkpointing")
"""Fields that do not change the trained weights: changing them keeps the partial work folder (and resumes)."""
