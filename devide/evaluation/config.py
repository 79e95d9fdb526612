"""Config of ``devide evaluate`` and its Stage, kept light: planning a pipeline imports this module only."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from devide.config import StageConfig
from devide.data.adapters import AdapterError, get_adapter
from devide.stage import Stage

ProtocolName = Literal["val", "max-f1-test", "max-mcc-test"]
DEFAULT_AGE_BANDS = (0, 20, 40, 60, 80)


class EvaluateConfig(StageConfig):
    model: Path = Field(description="trained model folder (save_pretrained), or a train artifact holding one")
    dataset: str = Field(description="dataset adapter: chestxray14, chexpert, padchest, rsna, siim, covidx, "
                                     "vindr, ms-cxr, chestx-det10")
    root: Path = Field(description="dataset root folder in the dataset's own layout")
    split: Literal["test", "val"] = Field("test", description="split to evaluate")
    knowledge: Path | None = Field(None, description="harmonize artifact (knowledge.json) describing classes the "
                                                     "model has no knowledge for")
    descriptions: Path | None = Field(None, description="JSON {dataset label: [sentences]} overriding queries")
    vocabulary: Path | None = Field(None, description="entity vocabulary YAML (default: the packaged one)")
    unseen: list[str] = Field(default_factory=list, description="entity ids to count as unseen")
    protocols: list[ProtocolName] = Field(default_factory=lambda: ["val", "max-f1-test", "max-mcc-test"],
                                          description="threshold protocols for F1/ACC/MCC")
    headline_protocol: ProtocolName = Field("val", description="protocol shown in the report's tables")
    val_max_images: int = Field(2000, ge=1, description="cap on validation images used to pick thresholds")
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples for AUC confidence intervals")
    seed: int = Field(0, description="bootstrap seed")
    age_bands: list[int] = Field(default_factory=lambda: list(DEFAULT_AGE_BANDS), description="age band edges")
    examples_per_class: int = Field(3, ge=0, description="grounding overlays per class")
    adapter_options: dict[str, Any] = Field(default_factory=dict, description="adapter options (e.g. frontal_only)")
    batch_size: int = Field(32, ge=1, description="images per forward pass")
    num_workers: int = Field(2, ge=1, description="image decoding threads")
    device: str | None = Field(None, description="torch device (default: cuda if available)")
    cache_dir: Path | None = Field(None, description="extra folder searched for and filled with prediction caches")

    @field_validator("dataset")
    @classmethod
    def known_dataset(cls, value: str) -> str:
        try:
            return get_adapter(value).name
        except AdapterError as exc:
            raise ValueError(str(exc)) from None


STAGE = Stage(
    name="evaluate",
    config_cls=EvaluateConfig,
    run="devide.evaluation.stage:run",
    help="zero-shot evaluation on an external dataset: AUC with bootstrap CIs, threshold protocols, grounding, "
         "subgroup gaps, report with plots",
    input_fields=("model", "root", "knowledge", "descriptions", "vocabulary"),
    volatile_fields=("batch_size", "num_workers", "device", "cache_dir"),
    code=("devide.evaluation", "devide.modeling", "devide.data.adapters", "devide.data.image_io",
          "knowledge"),
    preflight="devide.preflight:check_model_loading",
)
