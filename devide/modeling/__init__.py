"""The DeViDe model: Hugging Face-native towers, knowledge retrieval, cross-view fusion, multi-label
projection layer and the four losses (docs/method.md)."""

from .configuration_devide import DEFAULT_ENTITIES, VISION_PRESETS, DevideConfig, default_text_model_path
from .losses import ABSENT, NOT_MENTIONED, PRESENT, UNCERTAIN
from .modeling_devide import DevideModel, DevideOutput, PredictOutput
from .processing_devide import DevideImageProcessor

__all__ = [
    "ABSENT", "DEFAULT_ENTITIES", "NOT_MENTIONED", "PRESENT", "UNCERTAIN", "VISION_PRESETS", "DevideConfig",
    "DevideImageProcessor", "DevideModel", "DevideOutput", "PredictOutput", "default_text_model_path",
]
