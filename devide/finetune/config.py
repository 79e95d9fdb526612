"""The typed config of ``devide finetune``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from devide.data.adapters import AdapterError, get_adapter
from devide.stage import Stage
from devide.training.config import (
    AdamBetas,
    AdamEps,
    BatchSize,
    CheckpointEvery,
    Epochs,
    KeepCheckpoints,
    LearningRate,
    OptimisationConfig,
    Seed,
    WarmupRatio,
    WeightDecay,
)

Init = Literal["pretrained", "random"]
Mode = Literal["probe", "full"]


class FinetuneConfig(OptimisationConfig):
    """Config of ``devide finetune``: one dataset, one task, one labelled fraction, several variants.

    The variants are every combination of ``init`` x ``modes`` x ``align_weights``; they share the labelled
    selection (``selection.json``), so their differences come from the recipe alone.
    """

    # inputs
    model: Path = Field(description="pretrained DeViDe model folder (save_pretrained), or a train artifact holding one")
    dataset: str = Field(description="dataset adapter: chexpert, chestxray14, siim, rsna, ... (devide evaluate's names)")
    root: Path = Field(description="dataset root folder in the dataset's own layout")
    selection: Path | None = Field(
        default=None, description="a selection.json from an earlier run: reuse exactly that labelled subset")
    # task
    task: Literal["classification", "segmentation"] = Field(
        default="classification", description="multi-label classification (BCE, AUC) or segmentation (Dice+BCE)")
    fraction: float = Field(default=1.0, gt=0, le=1, description="fraction of training patients whose labels are used")
    classes: list[str] | None = Field(
        default=None, description="dataset classes to fine-tune on (default: every class the dataset labels/annotates)")
    init: list[Init] = Field(
        default_factory=lambda: ["pretrained", "random"],
        description="image tower starts: pretrained weights and/or the same architecture randomly initialised")
    modes: list[Mode] = Field(
        default_factory=lambda: ["full"],
        description="probe: frozen tower, only the head trains (with head linear = linear probe); full: everything")
    head: Literal["linear", "attention"] = Field(
        default="linear", description="classification head: linear on the global token, or class-attention pooling "
                                      "over patch tokens (gives attention maps; needed for align_weights > 0)")
    align_weights: list[float] = Field(
        default_factory=lambda: [0.0],
        description="coefficients of the explanation-guided attention-alignment loss (0 = off); one variant each")
    uncertain_policy: Literal["ignore", "positive", "negative"] = Field(
        default="ignore", description="training meaning of uncertain (-1) labels: masked, U-Ones or U-Zeros")
    # splits
    split_protocol: Literal["auto", "official", "partition"] = Field(
        default="auto", description="official: the dataset's train labels + official test split; partition: a "
                                    "patient-level sha1 split of every labelled image; auto: official when present")
    partition_percent: tuple[int, int, int] = Field(
        default=(70, 10, 20), description="train/val/test percentages of patients for the partition protocol")
    max_test_images: int | None = Field(default=None, ge=1, description="cap on test images (sha1 of image id)")
    # optimisation: the shared fields of OptimisationConfig, with fine-tuning defaults
    seed: Seed = 0
    batch_size: BatchSize = 16
    epochs: Epochs = 10.0
    learning_rate: LearningRate = 5e-5
    head_learning_rate: float = Field(default=1e-3, gt=0, description="peak AdamW learning rate of the new head")
    weight_decay: WeightDecay = 0.01
    adam_betas: AdamBetas = (0.9, 0.999)
    adam_eps: AdamEps = 1e-8
    warmup_ratio: WarmupRatio = 0.1
    # checkpoints, logging, evaluation
    checkpoint_every: CheckpointEvery = 200
    keep_checkpoints: KeepCheckpoints = 1
    resume: str = Field(default="latest", description="latest (newest checkpoint of each variant, if any) or never")
    eval_every: int = Field(default=0, ge=0, description="validation loss every N steps (0: only at the end)")
    eval_batch_size: int = Field(default=32, ge=1, description="images per forward pass at evaluation")
    bootstrap: int = Field(default=1000, ge=0, description="bootstrap resamples for AUC confidence intervals")
    overlays: int = Field(default=8, ge=0, description="segmentation overlay PNGs per variant (first test images)")
    threshold: float = Field(default=0.5, gt=0, lt=1, description="probability threshold of a predicted mask pixel")
    save_models: bool = Field(default=True, description="save each variant's fine-tuned weights (runs/<variant>/model)")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        try:
            return get_adapter(value).name
        except AdapterError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("init", "modes", "align_weights")
    @classmethod
    def _distinct(cls, value: list) -> list:
        if not value:
            raise ValueError("needs at least one value")
        if len(set(value)) != len(value):
            raise ValueError(f"values repeat: {value}")
        return value

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        if any(w < 0 for w in self.align_weights):
            raise ValueError("align_weights must be >= 0")
        aligned = any(w > 0 for w in self.align_weights)
        if aligned and self.task == "segmentation":
            raise ValueError("align_weights > 0 applies to classification (a segmentation head is supervised "
                             "by the masks themselves)")
        if aligned and self.head != "attention":
            raise ValueError("align_weights > 0 needs head: attention (a linear head has no attention map)")
        if sum(self.partition_percent) != 100 or min(self.partition_percent) < 0 or self.partition_percent[0] == 0:
            raise ValueError(f"partition_percent must be three non-negative integers summing to 100 with a "
                             f"non-zero train share, got {list(self.partition_percent)}")
        if self.resume not in ("latest", "never"):
            raise ValueError(f"resume must be 'latest' or 'never', got {self.resume!r}")
        return self


VOLATILE_FIELDS = ("workers", "resume", "log_every", "tensorboard", "eval_every", "eval_batch_size")
"""Fields that do not change the result: changing them keeps the partial work folder (and resumes)."""


STAGE = Stage(
    name="finetune",
    config_cls=FinetuneConfig,
    run="devide.finetune.stage:run",
    help="fine-tune the image tower for classification or segmentation with 1/10/100 % of the labels",
    input_fields=("model", "root", "selection"),
    volatile_fields=VOLATILE_FIELDS,
    code=("devide.finetune", "devide.training", "devide.modeling", "devide.evaluation",
          "devide.data.adapters", "devide.data.loading", "devide.data.image_io", "knowledge"),
    preflight="devide.preflight:check_model_loading",
)
