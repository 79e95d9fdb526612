"""The data a phantom image is rendered from: a :class:`Case` (patient, view, seeds) and its findings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Finding:
    """One finding of a study, with the aspects its renderer and the report both use.

    ``size`` is in centimetres for focal lesions, a fraction of the hemithorax for effusion and
    pneumothorax, and the cardiothoracic ratio for cardiomegaly (see ``findings.json``).
    """

    entity: str
    side: str | None = None  # right | left | bilateral (the patient's side)
    zone: str | None = None  # upper | mid | lower
    lobe: str | None = None  # RUL | RML | RLL | LUL | LLL
    size: float | None = None
    severity: str | None = None
    variant: str | None = None
    devices: tuple[str, ...] = ()
    seed: int = 0

    def sides(self) -> tuple[str, ...]:
        if self.side == "bilateral":
            return ("right", "left")
        return (self.side,) if self.side else ()

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if v not in (None, ())}
        if self.devices:
            data["devices"] = list(self.devices)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Finding:
        return cls(**{**data, "devices": tuple(data.get("devices", ()))})


@dataclass(frozen=True)
class Case:
    """Everything needed to render one image bit for bit."""

    seed: int
    view: str = "PA"
    sex: str = "M"
    age: int = 60
    findings: tuple[Finding, ...] = field(default_factory=tuple)
    patient: int | None = None
    """Seed of the patient's body (shared by a subject's studies); defaults to ``seed``."""

    @property
    def patient_seed(self) -> int:
        return self.seed if self.patient is None else self.patient

    @property
    def entities(self) -> list[str]:
        return [f.entity for f in self.findings]

    def without(self, *entities: str) -> Case:
        kept = tuple(f for f in self.findings if f.entity not in entities)
        return Case(self.seed, self.view, self.sex, self.age, kept, self.patient)

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "patient": self.patient_seed, "view": self.view, "sex": self.sex, "age": self.age,
                "findings": [f.to_json() for f in self.findings]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Case:
        return cls(data["seed"], data["view"], data["sex"], data["age"],
                   tuple(Finding.from_json(f) for f in data.get("findings", ())), data.get("patient"))
