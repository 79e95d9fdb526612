"""Zero-shot scoring of an evaluation set through ``DevideModel.predict``.

1. **Query plan** - each dataset class becomes one query: its vocabulary entity when the model knows it
   (``entities=[...]``, answered with the model's own knowledge), otherwise free descriptions
   (``descriptions={name: [sentences]}``) taken, in order of preference, from a user descriptions file, the
   knowledge base, the vocabulary definition, or the label text itself. A class is *seen* when its entity had
   at least one positive training label (``config.training_positives``, recorded by ``devide train``) and is not
   declared unseen; everything else is *unseen*, including trained entities that never had a positive label.
   A model saved without ``training_positives`` falls back to "one of the model's entities" (noted in the report).
2. **Prediction** - images are decoded with ``devide.data.image_io.load_image`` in a thread pool, processed by
   the model's image processor, and scored in batches (``drop_last`` never: the last batch is partial). An
   unreadable image becomes a rejection with its reason; every record ends either evaluated or rejected.
   Knowledge sentences are encoded once (the model's sentence-embedding cache) and reused for every batch.
3. **Cache** - probabilities, demographics, image sizes and the grounding maps needed later are stored in
   ``predictions/<key>.npz`` where key = sha256(model revision, dataset, split, record ids, knowledge hash).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from devide.data.adapters.base import EvalSet, Rejection, dicom_demographics
from devide.log import progress

logger = logging.getLogger("devide.evaluate")
MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "preprocessor_config.json",
               "knowledge.json")


# ---------------------------------------------------------------------------------------------- queries


@dataclass
class Query:
    """How one dataset class is asked of the model."""

    label: str
    """The dataset's class name."""
    entity: str | None
    """Vocabulary entity id, or None for a label outside the vocabulary."""
    kind: str
    """'entity' (model knowledge) or 'descriptions' (free text)."""
    name: str
    """Query name passed to predict (the entity id, or the description key)."""
    sentences: list[str] = field(default_factory=list)
    """Description sentences (kind 'descriptions'); the model's own knowledge otherwise (recorded for the hash)."""
    group: str = "unseen"
    source: str = ""
    training_positives: int | None = None
    """Positive training labels of ``entity`` (None: not a training entity, or not recorded by the model)."""


def load_vocabulary_optional(path: str | Path | None = None):
    """The knowledge vocabulary, or None when the knowledge package is not installed."""
    try:
        from knowledge.vocabulary import load_vocabulary
    except ImportError:  # pragma: no cover - the evaluation still works with label texts only
        logger.warning("knowledge.vocabulary not importable: every class is queried by its label text")
        return None
    return load_vocabulary(path)


def _norm(text: str) -> str:
    return " ".join(text.replace("_", " ").replace("-", " ").lower().split())


def resolve_entity(vocab, dataset_key: str | None, label: str) -> str | None:
    """Entity id of a dataset label: the vocabulary's mapping for the dataset, else a name/synonym/id match."""
    if vocab is None:
        return None
    if dataset_key:
        try:
            found = vocab.from_label(dataset_key, label)
        except KeyError:
            found = None
        if found:
            return found
    wanted = _norm(label)
    for entity in vocab.entities:
        if wanted in {_norm(entity.id), _norm(entity.name), *(_norm(s) for s in entity.synonyms)}:
            return entity.id
    return None


def read_knowledge(path: str | Path | None) -> dict[str, list[str]]:
    """Knowledge sentences per entity from a harmonize artifact folder or a knowledge.json file.

    Accepts ``{entity: {aspect: [sentences]}}`` (the knowledge.json export) and ``{entity: [sentences]}``.
    """
    if path is None:
        return {}
    path = Path(path)
    file = path / "knowledge.json" if path.is_dir() else path
    if not file.is_file():
        from devide.stage import StageError

        raise StageError(f"knowledge file not found: {file}")
    data = json.loads(file.read_text(encoding="utf-8"))
    out: dict[str, list[str]] = {}
    for entity, value in data.items():
        sentences = [s for group in value.values() for s in group] if isinstance(value, dict) else list(value)
        out[str(entity)] = list(dict.fromkeys(s.strip() for s in sentences if isinstance(s, str) and s.strip()))
    return out


def plan_queries(eval_set: EvalSet, dataset_key: str | None, model, vocab, knowledge: Mapping[str, list[str]],
                 descriptions: Mapping[str, list[str]], unseen: set[str]) -> list[Query]:
    """One :class:`Query` per class of ``eval_set`` (see the module docstring for the precedence)."""
    trained = set(model.config.entities)
    positives = seen_positives(model.config)
    model_knowledge = getattr(model, "knowledge", {}) or {}
    queries, used_names = [], set()
    for label in eval_set.classes:
        entity = resolve_entity(vocab, dataset_key, label)
        count = positives.get(entity) if positives is not None and entity in trained else None
        had_positive = entity in trained and (positives is None or (count or 0) > 0)
        group = "seen" if had_positive and entity not in unseen else "unseen"
        if label in descriptions:
            query = Query(label, entity, "descriptions", label, list(descriptions[label]), group, "descriptions file")
        elif entity and (entity in trained or entity in model_knowledge):
            query = Query(label, entity, "entity", entity, list(model_knowledge.get(entity, [])), group,
                          "model knowledge")
        elif entity and knowledge.get(entity):
            query = Query(label, entity, "descriptions", _entity_name(vocab, entity), list(knowledge[entity]), group,
                          "knowledge base")
        elif entity:
            query = Query(label, entity, "descriptions", _entity_name(vocab, entity),
                          [vocab.get(entity).definition], group, "vocabulary definition")
        else:
            text = label.replace("_", " ")
            query = Query(label, None, "descriptions", text, list(knowledge.get(_norm(label), [])) or [text],
                          "unseen", "knowledge base (label)" if knowledge.get(_norm(label)) else "label text")
        query.training_positives = count
        if query.name in used_names:  # two labels mapping to one entity: keep them distinct queries
            query.kind, query.name = "descriptions", f"{query.name} ({label})"
            query.sentences = query.sentences or [label]
        used_names.add(query.name)
        queries.append(query)
    return queries


def seen_positives(config) -> dict[str, int] | None:
    """{entity: positive training labels} recorded in a model config, or None for a model saved before
    ``devide train`` recorded them (then "seen" falls back to "a training entity")."""
    recorded = getattr(config, "training_positives", None)
    return {str(k): int(v) for k, v in recorded.items()} if isinstance(recorded, dict) else None


def _entity_name(vocab, entity: str) -> str:
    return vocab.get(entity).name if vocab is not None else entity.replace("_", " ")


def knowledge_hash(queries: Sequence[Query]) -> str:
    """sha256 of every query's name, kind and sentences, in class order."""
    blob = json.dumps([[q.label, q.kind, q.name, q.sentences] for q in queries], sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def model_revision(model_dir: str | Path) -> str:
    """sha256 over the model folder's weight, config, processor and knowledge files (size-capped hashing)."""
    from devide.stage import fingerprint_path

    digest = hashlib.sha256()
    for name in MODEL_FILES:
        path = Path(model_dir) / name
        if path.is_file():
            digest.update(f"{name}:{fingerprint_path(path)}\n".encode())
    for shard in sorted(Path(model_dir).glob("model-*.safetensors")):
        digest.update(f"{shard.name}:{fingerprint_path(shard)}\n".encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- predictions


@dataclass
class Predictions:
    """Everything evaluation needs from one pass over a split (also what the cache stores).

    probs: float32 [N, K] (NaN rows for rejected images); status: 'ok' or the rejection reason per record;
    sex/age: demographics (record metadata, else the DICOM header); sizes: int [N, 2] image (width, height);
    maps: record index -> float16 [K, h, w] for records with annotations; examples: class index -> [(prob,
    record index)] of the highest-scoring positives, whose maps are in ``maps`` too.
    """

    probs: np.ndarray
    status: list[str]
    sex: list[str | None]
    age: list[float | None]
    sizes: np.ndarray
    maps: dict[int, np.ndarray] = field(default_factory=dict)
    examples: dict[int, list[tuple[float, int]]] = field(default_factory=dict)
    phrase_maps: dict[int, np.ndarray] = field(default_factory=dict)
    """record index -> float16 [P, h, w] for MS-CXR-style phrases (one query per phrase text)."""

    @property
    def ok(self) -> np.ndarray:
        return np.array([s == "ok" for s in self.status], dtype=bool)

    def save(self, path: Path, meta: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"probs": self.probs, "sizes": self.sizes}
        arrays.update({f"map_{i}": m for i, m in self.maps.items()})
        arrays.update({f"phrase_{i}": m for i, m in self.phrase_maps.items()})
        side = {"status": self.status, "sex": self.sex, "age": self.age,
                "examples": {str(k): v for k, v in self.examples.items()}, **meta}
        tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
        np.savez_compressed(tmp, **arrays, meta=np.frombuffer(json.dumps(side).encode(), dtype=np.uint8))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> tuple[Predictions, dict]:
        with np.load(path) as data:
            side = json.loads(bytes(data["meta"]).decode())
            maps = {int(k[4:]): data[k] for k in data.files if k.startswith("map_")}
            phrases = {int(k[7:]): data[k] for k in data.files if k.startswith("phrase_")}
            predictions = cls(data["probs"], side["status"], side["sex"], side["age"], data["sizes"], maps,
                              {int(k): [tuple(x) for x in v] for k, v in side["examples"].items()}, phrases)
        return predictions, side


@contextmanager
def knowledge_cached(model, enabled: bool = True) -> Iterator[None]:
    """Encode knowledge sentences once: in eval mode a text tower gives the same embeddings every call, so the
    model's frozen-tower sentence cache is switched on for the duration (restored afterwards)."""
    previous = model.config.freeze_text
    model.config.freeze_text = bool(enabled) or previous
    try:
        yield
    finally:
        model.config.freeze_text = previous


class ZeroShotScorer:
    """Runs ``model.predict`` over an :class:`EvalSet` for a fixed query plan."""

    def __init__(self, model, processor, queries: Sequence[Query], *, batch_size: int = 32, num_workers: int = 2,
                 examples_per_class: int = 3, device: str | None = None) -> None:
        import torch

        self.torch = torch
        self.model, self.processor, self.queries = model, processor, list(queries)
        self.batch_size, self.num_workers = max(1, batch_size), max(1, num_workers)
        self.examples_per_class = examples_per_class
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.entities = [q.name for q in self.queries if q.kind == "entity"]
        self.descriptions = {q.name: q.sentences for q in self.queries if q.kind == "descriptions"}

    def predict_batch(self, pixel_values) -> tuple[np.ndarray, np.ndarray]:
        """pixel_values [B, C, H, W] -> (probs [B, K], grounding maps [B, K, h, w]) in query order."""
        out = self.model.predict(pixel_values.to(self.device), entities=self.entities or None,
                                 descriptions=self.descriptions or None)
        order = [out.names.index(q.name) for q in self.queries]
        probs = out.probs.float().cpu().numpy()[:, order]
        maps = out.grounding.float().cpu().numpy()[:, order]
        return probs, maps

    def _load(self, record) -> tuple[Any, str, tuple[int, int]]:
        from devide.data.image_io import ImageLoadError, load_image

        try:
            image = load_image(record.path)
        except ImageLoadError as exc:
            return None, f"unreadable image: {exc.reason}", (0, 0)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a recorded rejection, not a crash
            return None, f"unreadable image: {type(exc).__name__}: {exc}", (0, 0)
        return image, "ok", image.size

    def run(self, eval_set: EvalSet, desc: str = "zero-shot") -> Predictions:
        n, k = len(eval_set.records), len(self.queries)
        result = Predictions(np.full((n, k), np.nan, np.float32), ["pending"] * n, [None] * n, [None] * n,
                             np.zeros((n, 2), np.int32))
        heaps: dict[int, list[tuple[float, int]]] = {j: [] for j in range(k)}
        self.model.eval()
        self.model.to(self.device)
        with ThreadPoolExecutor(self.num_workers) as pool, knowledge_cached(self.model):
            starts = range(0, n, self.batch_size)
            for start in progress(starts, total=len(starts), desc=desc, unit="batch"):
                batch = eval_set.records[start:start + self.batch_size]
                loaded = list(pool.map(self._load, batch))
                self._demographics(batch, start, result)
                good = [i for i, (image, _, _) in enumerate(loaded) if image is not None]
                for i, (_, status, size) in enumerate(loaded):
                    result.status[start + i], result.sizes[start + i] = status, size
                if not good:
                    continue
                pixels = self.processor([loaded[i][0] for i in good], return_tensors="pt")["pixel_values"]
                probs, maps = self.predict_batch(pixels)
                for row, i in enumerate(good):
                    self._keep(start + i, eval_set.records[start + i], probs[row], maps[row], pixels[row],
                               result, heaps)
        result.examples = {j: sorted(h, reverse=True) for j, h in heaps.items() if h}
        wanted = {i for h in result.examples.values() for _, i in h} | {
            i for i, r in enumerate(eval_set.records) if r.has_annotations}
        result.maps = {i: m for i, m in result.maps.items() if i in wanted}
        return result

    def _keep(self, index: int, record, probs: np.ndarray, maps: np.ndarray, pixels, result: Predictions,
              heaps: dict[int, list[tuple[float, int]]]) -> None:
        result.probs[index] = probs
        keep_map = record.has_annotations
        for j, query in enumerate(self.queries):
            if record.labels.get(query.label) != 1 or self.examples_per_class <= 0:
                continue
            item = (float(probs[j]), index)
            if len(heaps[j]) < self.examples_per_class:
                heapq.heappush(heaps[j], item)
                keep_map = True
            elif item > heaps[j][0]:
                heapq.heapreplace(heaps[j], item)
                keep_map = True
        if keep_map:
            result.maps[index] = maps.astype(np.float16)
        if record.phrases:
            texts = list(dict.fromkeys(text for _, text, _ in record.phrases))
            out = self.model.predict(pixels[None].to(self.device), descriptions={t: [t] for t in texts})
            order = [out.names.index(t) for t in texts]
            result.phrase_maps[index] = out.grounding.float().cpu().numpy()[0, order].astype(np.float16)

    @staticmethod
    def _demographics(batch, start: int, result: Predictions) -> None:
        for i, record in enumerate(batch):
            sex, age = record.sex, record.age
            if sex is None and age is None and record.path.suffix.lower() in (".dcm", ".dicom"):
                sex, age = dicom_demographics(record.path)
            result.sex[start + i], result.age[start + i] = sex, age


def image_rejections(eval_set: EvalSet, predictions: Predictions) -> list[Rejection]:
    """The records whose image could not be read, as rejections."""
    return [Rejection(str(r.path), r.image_id, status)
            for r, status in zip(eval_set.records, predictions.status, strict=True) if status != "ok"]


def cap_records(eval_set: EvalSet, limit: int | None) -> EvalSet:
    """A deterministic subset of at most ``limit`` records (by sha1 of image id), for large validation splits."""
    if limit is None or len(eval_set.records) <= limit:
        return eval_set
    ranked = sorted(eval_set.records, key=lambda r: hashlib.sha1(r.image_id.encode()).hexdigest())[:limit]
    keep = {id(r) for r in ranked}
    capped = EvalSet(**{**{f: getattr(eval_set, f) for f in ("dataset", "split", "root", "classes",
                                                               "rejections", "label_sets", "notes")},
                        "records": [r for r in eval_set.records if id(r) in keep]})
    capped.notes = [*eval_set.notes, f"capped to {limit} of {len(eval_set.records)} images (sha1 of image id)"]
    return capped


def query_table(queries: Sequence[Query]) -> list[dict]:
    return [{k: v for k, v in asdict(q).items() if k != "sentences"} | {"n_sentences": len(q.sentences)}
            for q in queries]


def crop_window(frame: tuple[int, int], center_crop: bool) -> tuple[float, float, float, float]:
    """Fraction (left, top, right, bottom) of a (width, height) frame that the model saw: the central square
    after a shorter-side resize + centre crop, or the whole frame for a direct resize."""
    width, height = frame
    if not center_crop or width <= 0 or height <= 0:
        return 0.0, 0.0, 1.0, 1.0
    side = min(width, height)
    dx, dy = (width - side) / 2 / width, (height - side) / 2 / height
    return dx, dy, 1 - dx, 1 - dy
