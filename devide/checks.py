"""Config checks that need more than pydantic's field types, run before a stage does any work.

``Stage.check`` names one of these (``"module:function"``, called with the validated config); it raises
:class:`~devide.config.ConfigError` with one line, so the CLI exits 2 before a lock, a work folder or a model
exists. They stay cheap: no weights are loaded, nothing is downloaded (the text tower's config is read only
when the model config names no text config, from the local package or folder).
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from devide.config import ConfigError, redact_text


def _field_types(config_cls: type) -> dict[str, Any]:
    """{field: type} of a dataclass config (string annotations evaluated; unknown ones map to Any)."""
    namespace = {"Any": Any, **vars(typing)}
    types: dict[str, Any] = {}
    for klass in reversed(config_cls.__mro__):
        for name, annotation in getattr(klass, "__annotations__", {}).items():
            try:
                types[name] = eval(annotation, namespace) if isinstance(annotation, str) else annotation
            except Exception:  # noqa: BLE001 - an annotation naming a type we do not import: not checked
                types[name] = Any
    known = {f.name for f in dataclasses.fields(config_cls)} if dataclasses.is_dataclass(config_cls) else set()
    return {name: kind for name, kind in types.items() if not known or name in known}


def check_model_fields(model: dict[str, Any], prefix: str = "model") -> None:
    """Every key of a ``model:`` mapping is a DevideConfig field and its value has that field's type."""
    from devide.modeling import DevideConfig

    types = _field_types(DevideConfig)
    for key, value in model.items():
        if key not in types:
            close = sorted(name for name in types if name[:4] == key[:4])[:5]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"unknown config key '{prefix}.{key}' for DevideConfig{hint}")
        try:
            TypeAdapter(types[key]).validate_python(value)
        except ValidationError as exc:
            shown = repr(redact_text(value)) if isinstance(value, str) else type(value).__name__
            raise ConfigError(f"invalid config key '{prefix}.{key}': {exc.errors()[0]['msg']} (got {shown[:60]})"
                              ) from None


def check_patch_geometry(config: Any, prefix: str = "model") -> None:
    """The vision tower's patches tile its input: patch_size <= image_size, and divides it."""
    tower = config.vision_tower_config()
    patch = getattr(tower, "patch_size", None)
    if patch is None:
        return
    patch = int(patch[0] if isinstance(patch, (list, tuple)) else patch)
    size = config.image_size
    if patch <= 0 or patch > size:
        raise ConfigError(f"invalid config key '{prefix}.vision_config.patch_size': {patch} must be between 1 and "
                          f"the image size {size}")
    if size % patch:
        raise ConfigError(f"invalid config key '{prefix}.vision_config.image_size': {size} is not a multiple of "
                          f"the patch size {patch}")


def validate_model_config(model: dict[str, Any], prefix: str = "model") -> Any:
    """The DevideConfig a ``model:`` mapping describes, or a one-line :class:`ConfigError` naming the key."""
    from devide.modeling import DevideConfig

    check_model_fields(model, prefix)
    try:
        config = DevideConfig(**model)
    except (ValueError, TypeError, KeyError, OSError) as exc:
        raise ConfigError(f"invalid config key '{prefix}': {' '.join(str(exc).split())[:300]}") from None
    check_patch_geometry(config, prefix)
    return config


def check_prepared_dataset(path: Path, key: str = "dataset") -> None:
    """``path`` is a `devide prepare-data` artifact (``dataset/`` and ``entities.json``)."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"invalid config key '{key}': {path} is not a folder (pass a `devide prepare-data` artifact)")
    missing = [name for name in ("dataset", "entities.json") if not (path / name).exists()]
    if missing:
        raise ConfigError(f"invalid config key '{key}': {path} is not a `devide prepare-data` artifact "
                          f"(no {' or '.join(missing)})")


def check_train(cfg: Any) -> None:
    """``devide train``: the dataset is a prepare-data artifact and the model mapping is a valid DevideConfig."""
    check_prepared_dataset(cfg.dataset)
    validate_model_config(cfg.model)
