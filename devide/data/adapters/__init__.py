"""Registry of evaluation dataset adapters (one class per external dataset, in its real layout).

>>> from devide.data.adapters import get_adapter, adapter_names
>>> eval_set = get_adapter("chestxray14")(root).load("test")
"""

from __future__ import annotations

from devide.data.adapters.base import (
    AdapterError,
    DatasetAdapter,
    EvalRecord,
    EvalSet,
    Rejection,
)

REGISTRY: dict[str, type[DatasetAdapter]] = {}
ALIASES: dict[str, str] = {}


def register(*aliases: str):
    """Class decorator: register an adapter under its ``name`` (and optional aliases)."""

    def wrap(cls: type[DatasetAdapter]) -> type[DatasetAdapter]:
        if cls.name in REGISTRY:
            raise ValueError(f"adapter '{cls.name}' registered twice")
        REGISTRY[cls.name] = cls
        for alias in aliases:
            ALIASES[alias] = cls.name
        return cls

    return wrap


def adapter_names() -> list[str]:
    return sorted(REGISTRY)


def get_adapter(name: str) -> type[DatasetAdapter]:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in REGISTRY:
        raise AdapterError(f"unknown dataset '{name}' (choose from {', '.join(adapter_names())})")
    return REGISTRY[key]


# Importing the modules registers the adapters.
from devide.data.adapters import (  # noqa: E402,F401
    chestx_det10,
    chestxray14,
    chexpert,
    covidx,
    ms_cxr,
    padchest,
    rsna,
    siim,
    vindr,
)

__all__ = ["AdapterError", "DatasetAdapter", "EvalRecord", "EvalSet", "Rejection", "REGISTRY", "register",
           "get_adapter", "adapter_names"]
