"""The DeViDe trainer on Accelerate: one code path for one CPU, one GPU, many GPUs and many nodes.

``devide train`` (one process) and ``accelerate launch -m devide train`` (every process runs this) share it.
What it guarantees:

* AdamW (no decay on biases, norms and logit scales), linear warm-up then cosine decay, gradient clipping and
  accumulation, mixed precision from the launch config (bf16 where the GPU supports it), one seed that drives
  model init, data order (Accelerate's seedable sampler) and augmentation (per-sample generators); after the
  model is built every process reseeds with ``seed + rank`` so dropout and other in-step randomness differ
  between GPUs (Accelerate saves and restores each process's RNG state, so resume stays exact).
* Gradient accumulation adds no contrastive negatives: L_itc, L_tnc and L_pta each see one micro-batch (times
  the processes, for L_itc); only the gradients are summed. Raise ``batch_size`` (with
  ``gradient_checkpointing``) rather than accumulation to get more negatives.
* ``save_state`` every ``checkpoint_every`` optimizer steps into ``<out>.partial/checkpoints/step-N`` (atomic,
  newest ``keep_checkpoints`` kept); the registered :class:`TrainingProgress` records the data-loader position,
  so ``--resume latest`` continues with exactly the batches, augmentations, RNG states and learning rate the
  interrupted run would have used: the final weights are bit-identical to an uninterrupted run on CPU.
* The frozen text tower's sentence embeddings are computed up front in a fixed order (reports of the training
  split, entity names, knowledge sentences), so a resumed run reads the very same cached vectors.
* L_itc negatives are gathered from every process by the model; the scheduler is stepped once per optimizer
  step (not once per process), so N processes with batch B follow the same schedule as one with batch N*B.
* Sharded training (FSDP, DeepSpeed ZeRO-2/3): validation runs the *wrapped* model's forward, and the final
  weights come from ``accelerator.get_state_dict`` (every process takes part in gathering the shards); the main
  process writes ``save_pretrained`` of model + image processor into ``model/``.
* The model's config records ``training_positives`` (positive training labels per entity: evaluation calls an
  entity "seen" only when it had one) and ``training_data`` (which dataset, phantom or not, how many images).
* Main process only: progress bar, tensorboard (loss by term, lr, throughput, validation AUROC), checkpoint
  promotion.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.profiler import record_function

from devide.config import ConfigError
from devide.data.loading import CxrAugment, CxrDataset, make_dataloader, processor_to_pixels, read_entities
from devide.log import is_quiet
from devide.stage import StageContext, StageError, write_json_atomic
from devide.training import checkpoints
from devide.training.checkpoints import TrainingProgress
from devide.training.config import TrainConfig

logger = logging.getLogger("devide.train")

MODEL_DIR = "model"
LOG_DIR = "logs"
SUMMARY = "train_summary.json"
LOSS_TERMS = ("loss", "loss_bce", "loss_itc", "loss_tnc", "loss_pta")
TEXT_WARMUP_CHUNK = 4096


# ---------------------------------------------------------------------------------------------- inputs


def resolve_image_root(cfg: TrainConfig) -> Path:
    """``image_root``, else the ``root`` recorded in the prepare-data artifact's resolved config."""
    if cfg.image_root is not None:
        return Path(cfg.image_root)
    resolved = Path(cfg.dataset) / "config.resolved.yaml"
    if resolved.is_file():
        root = (yaml.safe_load(resolved.read_text(encoding="utf-8")) or {}).get("root")
        if root:
            return Path(root)
    raise ConfigError(f"{cfg.dataset}: cannot tell where its images are; set image_root")


def read_knowledge_file(path: Path) -> dict[str, list[str]]:
    """``knowledge.json`` ({entity: {aspect: [sentences]}} or {entity: [sentences]}) -> {entity: [sentences]}."""
    path = Path(path)
    if path.is_dir():
        path = path / "knowledge.json"
    if not path.is_file():
        raise ConfigError(f"knowledge file not found: {path} (pass the harmonize artifact or its knowledge.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected an object keyed by entity id")
    knowledge: dict[str, list[str]] = {}
    for entity, value in data.items():
        groups = value.values() if isinstance(value, dict) else [value]
        sentences = [s for group in groups if isinstance(group, list) for s in group if isinstance(s, str)]
        knowledge[str(entity)] = list(dict.fromkeys(sentences))
    return knowledge


def training_knowledge(cfg: TrainConfig, vocabulary: Any) -> tuple[dict[str, list[str]], str]:
    """(knowledge per entity, where it came from): the harmonize artifact, or definitions when configured."""
    if cfg.knowledge is not None:
        return read_knowledge_file(cfg.knowledge), str(cfg.knowledge)
    if cfg.knowledge_fallback == "definitions":
        return {e.id: [e.definition] for e in vocabulary.entities if e.definition}, "vocabulary definitions"
    raise ConfigError("train needs knowledge: set knowledge (the harmonize artifact) or knowledge_fallback: definitions")


def training_entities(cfg: TrainConfig, vocabulary: Any) -> list[str]:
    entities = list(cfg.entities) if cfg.entities else list(vocabulary.ids)
    unknown = [e for e in [*entities, *cfg.exclude_entities] if e not in vocabulary]
    if unknown:
        raise ConfigError(f"unknown entity id(s) {', '.join(unknown[:5])} (not in the vocabulary)")
    excluded = set(cfg.exclude_entities)
    return [e for e in entities if e not in excluded]


# ---------------------------------------------------------------------------------------------- model


def build_model(cfg: TrainConfig, entities: list[str], vocabulary: Any) -> Any:
    """A new DevideModel from ``cfg.model`` (keys checked), or the saved one in ``init_from``."""
    from devide.modeling import DevideConfig, DevideModel

    if cfg.init_from is not None:
        return DevideModel.from_pretrained(str(cfg.init_from))
    known = {name for klass in DevideConfig.__mro__ for name in getattr(klass, "__annotations__", {})}
    unknown = sorted(set(cfg.model) - known)
    if unknown:
        raise ConfigError(f"invalid config key 'model.{unknown[0]}': not a DevideConfig field")
    if "entities" in cfg.model:
        raise ConfigError("set the entity list with 'entities', not 'model.entities'")
    names = {e: vocabulary.get(e).name.lower() for e in entities}
    try:
        config = DevideConfig(entities=entities, entity_names=names, **cfg.model)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model: {exc}") from None
    return DevideModel(config)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters, weight decay only on matrices (not biases, norms, logit scales)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (decay if parameter.ndim >= 2 and "norm" not in name.lower() else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def enable_gradient_checkpointing(model: Any) -> None:
    """Activation checkpointing in both towers' encoder layers (non-reentrant: works with frozen inputs and
    restores the RNG state, so the loss and gradients equal the unchecked forward's)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.25 (the older name is deprecated)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def is_sharded(accelerator: Any) -> bool:
    """True under FSDP or DeepSpeed (parameters may live in shards outside the wrapped forward)."""
    return str(accelerator.distributed_type).rsplit(".", 1)[-1] in ("FSDP", "DEEPSPEED")


def warm_text_cache(model: Any, texts: list[str]) -> int:
    """Encode ``texts`` through the frozen text tower in a fixed order, so every run reads identical vectors."""
    if not model.config.freeze_text:
        return 0
    unique = list(dict.fromkeys(t for t in texts if t and t.strip()))
    with torch.no_grad():
        for start in range(0, len(unique), TEXT_WARMUP_CHUNK):
            model.encode_text(unique[start:start + TEXT_WARMUP_CHUNK])
    return len(unique)


# ---------------------------------------------------------------------------------------------- accelerate


def resolve_mixed_precision(choice: str) -> str | None:
    """``auto``: the launcher's setting when launched, else bf16 on GPUs that support it, else no."""
    if choice != "auto":
        return choice
    if "ACCELERATE_MIXED_PRECISION" in os.environ:
        return None  # Accelerator reads the launch config's value
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def build_accelerator(cfg: TrainConfig, work_dir: Path, needs_unused: bool) -> Any:
    from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
    from accelerate.utils import ProjectConfiguration

    return Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=resolve_mixed_precision(cfg.mixed_precision),
        log_with="tensorboard" if cfg.tensorboard else None,
        project_config=ProjectConfiguration(project_dir=str(work_dir), logging_dir=str(work_dir / LOG_DIR)),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
        # a switched-off loss leaves its head without gradient; DDP must then look for unused parameters
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=needs_unused)],
    )


def flat_hparams(cfg: TrainConfig) -> dict[str, Any]:
    """The config as tensorboard hparams (scalars and strings only)."""
    flat: dict[str, Any] = {}
    for key, value in cfg.model_dump(mode="json", exclude={"out"}).items():
        items = value.items() if isinstance(value, dict) else [("", value)]
        for sub, item in items:
            name = f"{key}.{sub}" if sub else key
            flat[name] = item if isinstance(item, (int, float, str, bool)) else json.dumps(item)
    return flat


# ---------------------------------------------------------------------------------------------- validation


@dataclass
class Validation:
    """Zero-shot validation on a held-out split: AUROC of ``predict`` probabilities per entity."""

    loader: Any
    entities: list[str]
    columns: torch.Tensor  # indexes of ``entities`` in the model's label order

    @classmethod
    def build(cls, rows: Any, dataset: CxrDataset, model_entities: list[str], batch_size: int, workers: int,
              seed: int) -> Validation | None:
        labels = np.stack([dataset.labels_for(r).numpy() for r in rows["labels"]]) if len(rows) else None
        if labels is None:
            return None
        usable = [i for i in range(labels.shape[1]) if (labels[:, i] == 1).any() and (labels[:, i] == 0).any()]
        if not usable:
            return None
        loader = make_dataloader(dataset, batch_size, shuffle=False, workers=workers, seed=seed)
        return cls(loader, [model_entities[i] for i in usable], torch.tensor(usable))

    def run(self, accelerator: Any, model: Any) -> dict[str, float]:
        """AUROC per usable entity. Runs the *wrapped* model's forward (eval mode, no loss): under FSDP or
        DeepSpeed ZeRO-3 only the wrapper gathers the sharded parameters, so a call on the unwrapped module
        would see shards. The presence logits of ``config.entities`` are what ``predict`` returns for them."""
        from sklearn.metrics import roc_auc_score

        all_probs, all_labels = [], []
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for batch in self.loader:
                    logits = model(pixel_values=batch["pixel_values"], return_loss=False).logits
                    columns = self.columns.to(logits.device)
                    probs = logits[:, columns].float().sigmoid()
                    labels = batch["labels"][:, columns.to(batch["labels"].device)]
                    probs, labels = accelerator.gather_for_metrics((probs, labels))
                    all_probs.append(probs.cpu())
                    all_labels.append(labels.cpu())
        finally:
            model.train(was_training)
        probs, labels = torch.cat(all_probs).numpy(), torch.cat(all_labels).numpy()
        metrics: dict[str, float] = {}
        for k, entity in enumerate(self.entities):
            certain = (labels[:, k] == 0) | (labels[:, k] == 1)
            if len(set(labels[certain, k].tolist())) == 2:
                metrics[f"val/auroc/{entity}"] = float(roc_auc_score(labels[certain, k], probs[certain, k]))
        scores = list(metrics.values())
        if scores:
            metrics["val/auroc_mean"] = float(np.mean(scores))
        return metrics


# ---------------------------------------------------------------------------------------------- the loop


@dataclass
class Plan:
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    global_batch: int


def validation_indices(subject_ids: list[int] | None, total: int, limit: int, seed: int) -> list[int]:
    """Rows of the held-out split for in-training validation: at most ``limit``, spread over subjects.

    MIMIC splits are subject-ordered, so "the first N rows" would be a handful of patients. Subjects are taken
    in a seeded random order, one image each per round (a second image of a subject only after every subject
    gave one); without subject ids, a seeded random sample of rows. Sorted (sequential reads).
    """
    rng = np.random.default_rng(seed)
    if total <= limit:
        return list(range(total))
    if not subject_ids:
        return sorted(rng.choice(total, size=limit, replace=False).tolist())
    by_subject: dict[int, list[int]] = defaultdict(list)
    for row, subject in enumerate(subject_ids):
        by_subject[subject].append(row)
    order = [list(by_subject)[i] for i in rng.permutation(len(by_subject))]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < limit:
        chosen += [by_subject[s][depth] for s in order if depth < len(by_subject[s])][: limit - len(chosen)]
        depth += 1
    return sorted(chosen)


def training_positives(rows: Any, dataset_entities: list[str], model_entities: list[str]) -> dict[str, int]:
    """Positive (1) training labels per model entity; 0 for an entity the dataset does not label."""
    column = {e: i for i, e in enumerate(dataset_entities)}
    counts = np.zeros(len(dataset_entities), dtype=np.int64)
    for start in range(0, len(rows), 65536):  # chunks: MIMIC-CXR has ~370k rows x dozens of labels
        labels = np.asarray(rows[start:start + 65536]["labels"], dtype=np.int64)
        if labels.size:
            counts += (labels == 1).sum(axis=0)
    return {e: int(counts[column[e]]) if e in column else 0 for e in model_entities}


def describe_training_data(cfg: TrainConfig, image_root: Path, images: int) -> dict[str, Any]:
    """What the model was trained on, for its config and card: phantom data carry the phantom's findings.json."""
    phantom = any((folder / "findings.json").is_file() for folder in (image_root, image_root.parent))
    return {"dataset": "phantom (synthetic radiographs)" if phantom else image_root.name, "phantom": phantom,
            "split": cfg.train_split, "images": int(images)}


def plan_steps(cfg: TrainConfig, batches_per_epoch: int, world_size: int) -> Plan:
    if batches_per_epoch == 0:
        raise StageError(f"the '{cfg.train_split}' split has fewer images than one batch per process")
    per_epoch = math.ceil(batches_per_epoch / cfg.gradient_accumulation_steps)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch))
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_ratio * total)
    return Plan(per_epoch, total, min(warmup, total), cfg.batch_size * cfg.gradient_accumulation_steps * world_size)


class Trainer:
    """Holds the prepared objects of one run; :meth:`fit` trains to ``plan.total_steps`` and saves."""

    def __init__(self, cfg: TrainConfig, ctx: StageContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.work_dir = Path(ctx.work_dir)
        self.loss_sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros(()))
        self.summary: dict[str, Any] = {"validation": []}
        self.itc_candidates = 0

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        import datasets
        from accelerate.utils import set_seed
        from transformers import get_cosine_schedule_with_warmup

        from knowledge.vocabulary import load_vocabulary

        cfg = self.cfg
        loss_switches = {k: v for k, v in cfg.model.items() if k.startswith("use_")}
        self.accelerator = accelerator = build_accelerator(cfg, self.work_dir, not all(loss_switches.values()))
        accelerator.wait_for_everyone()  # rank 0 has prepared the work folder
        if not accelerator.is_main_process:
            self.ctx.logger.setLevel(logging.WARNING)
        logging.getLogger("accelerate").setLevel(logging.WARNING)  # per-file save/load notices: noise on the console
        if self.ctx.quiet or is_quiet():
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # "Loading weights" / "Writing model shards" bars
        set_seed(cfg.seed, deterministic=cfg.deterministic)

        vocabulary = load_vocabulary(cfg.vocabulary)
        entities = training_entities(cfg, vocabulary)
        knowledge, self.knowledge_source = training_knowledge(cfg, vocabulary)
        self.model = model = build_model(cfg, entities, vocabulary)
        # Identical init on every process (above); from here each process draws its own dropout masks. Resume
        # stays exact: save_state/load_state carry every process's RNG state.
        set_seed(cfg.seed + accelerator.process_index, deterministic=cfg.deterministic)
        self.summary["process_seed"] = cfg.seed + accelerator.process_index
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        model.set_knowledge(knowledge)
        self.entities = list(model.config.entities)
        self.processor = processor = model.image_processor()

        splits = datasets.load_from_disk(str(Path(cfg.dataset) / "dataset"))
        if cfg.train_split not in splits:
            raise ConfigError(f"{cfg.dataset}: no split '{cfg.train_split}' (has {', '.join(splits)})")
        dataset_entities = read_entities(cfg.dataset)
        image_root = resolve_image_root(cfg)
        to_pixels = processor_to_pixels(processor)
        augment = CxrAugment(hflip=cfg.hflip) if cfg.augment else None
        self.train_rows = splits[cfg.train_split]
        self.record_training_data(model, dataset_entities, image_root)
        self.train_set = CxrDataset(self.train_rows, image_root, to_pixels, dataset_entities, self.entities,
                                    draft_size=processor.size, augment=augment, augment_size=processor.size,
                                    seed=cfg.seed)
        train_loader = make_dataloader(self.train_set, cfg.batch_size, shuffle=True, workers=cfg.workers,
                                       seed=cfg.seed, drop_last=True)
        self.validation = None
        if cfg.eval_split and cfg.eval_split in splits:
            held_out = splits[cfg.eval_split]
            subjects = held_out["subject_id"] if "subject_id" in held_out.column_names else None
            rows = held_out.select(validation_indices(subjects, len(held_out), cfg.eval_max_images, cfg.seed))
            eval_set = CxrDataset(rows, image_root, to_pixels, dataset_entities, self.entities,
                                  draft_size=processor.size)
            self.validation = Validation.build(rows, eval_set, self.entities, cfg.batch_size, cfg.workers, cfg.seed)
        elif cfg.eval_split:
            self.ctx.logger.warning("no '%s' split: zero-shot validation skipped", cfg.eval_split)

        optimizer = torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=cfg.learning_rate,
                                      betas=cfg.adam_betas, eps=cfg.adam_eps)
        prepared = accelerator.prepare(model, optimizer, train_loader,
                                       *([self.validation.loader] if self.validation else []))
        self.model, self.optimizer, self.train_loader = prepared[:3]
        if self.validation:
            self.validation.loader = prepared[3]
        self.plan = plan_steps(cfg, len(self.train_loader), accelerator.num_processes)
        # Stepped by hand once per optimizer step: Accelerate's wrapper would step it once per process.
        self.scheduler = get_cosine_schedule_with_warmup(optimizer, self.plan.warmup_steps, self.plan.total_steps)
        self.progress = TrainingProgress()
        accelerator.register_for_checkpointing(self.scheduler, self.progress)

    def record_training_data(self, model: Any, dataset_entities: list[str], image_root: Path) -> None:
        """``training_positives`` and ``training_data`` into the model's config (saved with the weights)."""
        positives = training_positives(self.train_rows, dataset_entities, self.entities)
        model.config.training_positives = positives
        model.config.training_data = describe_training_data(self.cfg, image_root, len(self.train_rows))
        never = [e for e, n in positives.items() if n == 0]
        if never:
            self.ctx.logger.warning("%d of %d entities have no positive training label (evaluated as unseen): %s",
                                    len(never), len(positives), ", ".join(never[:12]) + (" ..." if len(never) > 12
                                                                                         else ""))
        if self.cfg.gradient_accumulation_steps > 1 and any(
                getattr(model.config, flag) for flag in ("use_itc", "use_tnc", "use_pta")):
            self.ctx.logger.warning("gradient_accumulation_steps %d: the contrastive terms (L_itc, L_tnc, L_pta) "
                                    "still see one micro-batch of negatives; only gradients accumulate",
                                    self.cfg.gradient_accumulation_steps)

    def resume(self) -> Path | None:
        """Load the checkpoint named by ``cfg.resume`` (``latest``: the newest in the work folder)."""
        cfg, accelerator = self.cfg, self.accelerator
        if accelerator.is_main_process:
            checkpoints.clear_temporary(self.work_dir)
            if cfg.resume == "never":
                shutil.rmtree(self.work_dir / checkpoints.CHECKPOINTS, ignore_errors=True)
        accelerator.wait_for_everyone()
        if cfg.resume == "never":
            return None
        path = checkpoints.latest_checkpoint(self.work_dir) if cfg.resume == "latest" else Path(cfg.resume)
        if path is None:
            return None
        accelerator.load_state(str(path))
        self.ctx.logger.info("resumed from %s (step %d, epoch %d, batch %d)", path, self.progress.step,
                             self.progress.epoch, self.progress.batches_in_epoch)
        return path

    def warm_text(self) -> None:
        """Reports of the training split, entity query names, then knowledge sentences: one fixed order.

        Skipped when the model is sharded (FSDP, DeepSpeed): the text tower's weights exist only inside the
        wrapped forward there, so the frozen tower's cache fills on first use instead."""
        if is_sharded(self.accelerator):
            self.ctx.logger.info("text cache filled during training (%s shards the text tower)",
                                 self.accelerator.distributed_type)
            return
        unwrapped = self.accelerator.unwrap_model(self.model)
        texts = list(self.train_rows["report_text"])
        texts += [unwrapped.config.entity_name(e) for e in self.entities]
        texts += [s for e in self.entities for s in unwrapped.knowledge.get(e, [])]
        started = time.perf_counter()
        count = warm_text_cache(unwrapped, texts)
        self.ctx.logger.info("text cache: %d sentences encoded in %.1f s", count, time.perf_counter() - started)

    # ------------------------------------------------------------------ steps
    def train_step(self, batch: dict[str, Any]) -> None:
        cfg, accelerator = self.cfg, self.accelerator
        # record_function ranges name the step's phases in a torch.profiler trace (benchmarks/train.py
        # --profile); with no profiler active each costs a few microseconds per step.
        with accelerator.accumulate(self.model):
            with record_function("train/forward"):
                output = self.model(pixel_values=batch["pixel_values"], labels=batch["labels"],
                                    report_texts=batch["report_texts"])
            if output.loss is None:
                raise StageError("the model returned no loss (every loss term switched off?)")
            with record_function("train/backward"):
                accelerator.backward(output.loss)
            if accelerator.sync_gradients and cfg.max_grad_norm:
                with record_function("train/clip"):
                    accelerator.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            with record_function("train/optimizer"):
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        with record_function("train/loss_bookkeeping"):
            for term in LOSS_TERMS:
                value = getattr(output, term, None)
                if value is not None:
                    # kept on the device: no host sync per micro-batch
                    self.loss_sums[term] = self.loss_sums[term] + value.detach().float()
            self.loss_sums["micro_batches"] = self.loss_sums["micro_batches"] + 1
        if output.logits_per_image is not None:
            self.itc_candidates = max(self.itc_candidates, int(output.logits_per_image.shape[1]))

    def log_window(self, seconds: float, images: int) -> dict[str, float]:
        """Mean loss terms since the last log (over processes), lr and global images/s."""
        accelerator = self.accelerator
        count = self.loss_sums.pop("micro_batches", torch.ones(()))
        names = sorted(self.loss_sums)
        device = accelerator.device
        local = torch.stack([(self.loss_sums[n] / count).to(device) for n in names]) if names else torch.zeros(0)
        mean = accelerator.reduce(local.to(device), reduction="mean").cpu()
        self.loss_sums.clear()
        metrics = {f"train/{n}": float(v) for n, v in zip(names, mean)}
        metrics["train/lr"] = float(self.scheduler.get_last_lr()[0])
        metrics["train/images_per_second"] = images / max(seconds, 1e-9)
        return metrics

    def checkpoint(self) -> None:
        accelerator, step = self.accelerator, self.progress.step
        tmp = checkpoints.temporary_dir(self.work_dir, step)
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            final = checkpoints.promote(self.work_dir, step, self.progress.state_dict(), self.cfg.keep_checkpoints)
            self.ctx.logger.info("checkpoint %s", final.name)
        accelerator.wait_for_everyone()

    def validate(self) -> None:
        if self.validation is None:
            return
        metrics = self.validation.run(self.accelerator, self.model)
        self.accelerator.log(metrics, step=self.progress.step)
        self.summary["validation"].append({"step": self.progress.step, **metrics})
        if "val/auroc_mean" in metrics:
            self.ctx.logger.info("step %d: zero-shot validation AUROC %.3f over %d entities", self.progress.step,
                                 metrics["val/auroc_mean"], len(metrics) - 1)

    # ------------------------------------------------------------------ fit
    def fit(self) -> dict[str, Any]:
        cfg, accelerator, plan, progress = self.cfg, self.accelerator, self.plan, self.progress
        from tqdm.auto import tqdm

        bar = tqdm(total=plan.total_steps, initial=progress.step, desc="training", unit="step", dynamic_ncols=True,
                   disable=not accelerator.is_main_process or self.ctx.quiet or is_quiet())
        started = window_start = time.perf_counter()
        window_images, start_step, last_metrics = 0, progress.step, {}
        while progress.step < plan.total_steps:
            self.train_loader.set_epoch(progress.epoch)
            self.train_set.set_epoch(progress.epoch)
            loader = self.train_loader
            if progress.batches_in_epoch:
                loader = accelerator.skip_first_batches(self.train_loader, progress.batches_in_epoch)
            finished_epoch = True
            for batch in loader:
                self.train_step(batch)
                progress.batches_in_epoch += 1
                window_images += batch["pixel_values"].shape[0] * accelerator.num_processes
                if not accelerator.sync_gradients:
                    continue
                with record_function("train/scheduler_progress"):
                    if not accelerator.optimizer_step_was_skipped:
                        self.scheduler.step()
                    progress.step += 1
                    progress.images_seen += plan.global_batch
                    bar.update(1)
                if progress.step % cfg.log_every == 0 or progress.step == plan.total_steps:
                    with record_function("train/log"):
                        last_metrics = self.log_window(time.perf_counter() - window_start, window_images)
                        accelerator.log(last_metrics, step=progress.step)
                        bar.set_postfix(loss=f"{last_metrics.get('train/loss', float('nan')):.4f}")
                    window_start, window_images = time.perf_counter(), 0
                if cfg.eval_every and progress.step % cfg.eval_every == 0 and progress.step < plan.total_steps:
                    self.validate()
                if progress.step % cfg.checkpoint_every == 0 and progress.step < plan.total_steps:
                    self.checkpoint()
                if progress.step >= plan.total_steps:
                    finished_epoch = False
                    break
            if finished_epoch:
                progress.epoch += 1
                progress.batches_in_epoch = 0
        bar.close()
        seconds = time.perf_counter() - started
        self.validate()
        if "process_seed" in self.summary:  # set by setup(); a subclass with its own setup may not reseed
            seed = torch.tensor([self.summary.pop("process_seed")], device=accelerator.device)
            self.summary["process_seeds"] = accelerator.gather(seed).tolist()
        self.summary.update(
            steps=progress.step, resumed_from_step=start_step, epochs_started=progress.epoch + 1,
            images_seen=progress.images_seen, world_size=accelerator.num_processes,
            distributed_type=str(accelerator.distributed_type).rsplit(".", 1)[-1],
            global_batch=plan.global_batch, total_steps=plan.total_steps, warmup_steps=plan.warmup_steps,
            seconds=round(seconds, 3),
            images_per_second=round((progress.step - start_step) * plan.global_batch / max(seconds, 1e-9), 2),
            itc_candidates=int(accelerator.gather(torch.tensor([self.itc_candidates],
                                                               device=accelerator.device)).max().item()),
            final_train=last_metrics, knowledge_source=self.knowledge_source,
            mixed_precision=str(accelerator.mixed_precision), entities=len(self.entities),
        )
        return self.summary

    def save(self) -> None:
        """The full weights (``accelerator.get_state_dict``: every process helps gather FSDP / ZeRO-3 shards)
        saved by the main process with model config + processor into ``model/`` (temp folder + rename)."""
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        state_dict = accelerator.get_state_dict(self.model)  # collective: every process must call it
        if accelerator.is_main_process:
            final, tmp = self.work_dir / MODEL_DIR, self.work_dir / f".tmp-{MODEL_DIR}"
            shutil.rmtree(tmp, ignore_errors=True)
            unwrapped = accelerator.unwrap_model(self.model)
            unwrapped.save_pretrained(str(tmp), state_dict=state_dict, save_function=accelerator.save)
            self.processor.save_pretrained(str(tmp))  # the processor the model was trained with
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            write_json_atomic(self.work_dir / SUMMARY, self.summary)
            if not self.cfg.keep_checkpoints_at_end:
                shutil.rmtree(self.work_dir / checkpoints.CHECKPOINTS, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.end_training()


def run(cfg: TrainConfig, ctx: StageContext) -> dict[str, Any]:
    trainer = Trainer(cfg, ctx)
    trainer.setup()
    if cfg.tensorboard:
        trainer.accelerator.init_trackers("devide-train", config=flat_hparams(cfg))
    trainer.resume()
    trainer.warm_text()
    plan = trainer.plan
    ctx.logger.info("training %d steps (%d per epoch, warm-up %d), global batch %d on %d process(es), %s",
                    plan.total_steps, plan.steps_per_epoch, plan.warmup_steps, plan.global_batch,
                    trainer.accelerator.num_processes, trainer.accelerator.device)
    summary = trainer.fit()
    trainer.save()
    validation = summary["validation"][-1] if summary["validation"] else {}
    return {"steps": summary["steps"], "world_size": summary["world_size"], "images_seen": summary["images_seen"],
            "images_per_second": summary["images_per_second"],
            "val_auroc_mean": validation.get("val/auroc_mean"), "resumed_from_step": summary["resumed_from_step"]}
