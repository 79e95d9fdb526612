"""One fine-tuning variant on the Accelerate trainer of ``devide train``.

:class:`FinetuneTrainer` subclasses :class:`devide.training.trainer.Trainer` and keeps its whole loop
(``fit``: gradient accumulation, clipping, per-step cosine schedule, logging, atomic ``save_state`` checkpoints
registered with the data-loader position, exact ``resume``), replacing only what is specific: the model (tower
+ head), the data (evaluation records with labels and masks), the loss of one step, validation (a validation
loss) and the save. After ``fit`` it predicts the test (and validation) images, sharded over the processes and
gathered with ``gather_for_metrics``.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from devide.data.adapters.base import EvalRecord
from devide.data.loading import CxrAugment
from devide.finetune.config import FinetuneConfig
from devide.finetune.data import FinetuneDataset, make_loader
from devide.finetune.losses import alignment_loss, dice_bce_loss
from devide.finetune.model import FinetuneModel, build_model
from devide.modeling.losses import masked_bce
from devide.stage import StageContext, StageError, write_json_atomic
from devide.training import checkpoints
from devide.training.checkpoints import TrainingProgress
from devide.training.trainer import SUMMARY, Trainer, build_accelerator, parameter_groups, plan_steps

MODEL_DIR = "model"
WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class Variant:
    """One recipe: where the tower starts, what trains, and the alignment coefficient."""

    init: str
    mode: str
    align_weight: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.init}-{self.mode}" + (f"-align{self.align_weight:g}" if self.align_weight > 0 else "")


@dataclass
class Prepared:
    """What every variant shares: classes, records per split, the pretrained tower and the processor."""

    classes: list[str]
    train: list[EvalRecord]
    val: list[EvalRecord]
    test: list[EvalRecord]
    tower: Any
    vision_config: Any
    processor: Any
    label_sets: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class PredictionSet:
    """Gathered predictions of one split, in record order (row i = records[i])."""

    probs: np.ndarray | None = None  # [N, K] classification probabilities
    maps: np.ndarray | None = None  # [N, K, h, w] class-attention maps
    counts: np.ndarray | None = None  # [N, 3, K] segmentation pixel counts: intersection, predicted, target
    known: np.ndarray | None = None  # [N, K] bool: segmentation mask known
    frames: np.ndarray | None = None  # [N, 2] (width, height) of each record's annotation frame


class FinetuneTrainer(Trainer):
    """The Accelerate trainer for one :class:`Variant` (its work folder is ``runs/<variant>``)."""

    def __init__(self, cfg: FinetuneConfig, ctx: StageContext, variant: Variant, data: Prepared) -> None:
        super().__init__(cfg, ctx)  # type: ignore[arg-type] - duck-typed: the fields the loop reads are shared
        self.variant, self.data = variant, data
        self.segmentation = cfg.task == "segmentation"
        self.with_masks = self.segmentation or variant.align_weight > 0
        self.knowledge_source = "not used (fine-tuning)"
        self.entities = list(data.classes)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        from accelerate.utils import set_seed
        from transformers import get_cosine_schedule_with_warmup

        cfg, data = self.cfg, self.data
        self.accelerator = accelerator = build_accelerator(cfg, self.work_dir, needs_unused=False)
        if accelerator.is_main_process:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            self.ctx.logger.setLevel(logging.WARNING)
        set_seed(cfg.seed, deterministic=cfg.deterministic)
        processor = data.processor
        self.model = model = build_model(
            data.tower, data.vision_config, init=self.variant.init, mode=self.variant.mode, task=cfg.task,
            head=cfg.head, num_classes=len(data.classes), image_size=processor.size, channels=processor.num_channels)
        augment = CxrAugment(hflip=cfg.hflip) if cfg.augment else None
        self.train_set = FinetuneDataset(data.train, data.classes, processor, with_masks=self.with_masks,
                                         augment=augment, seed=cfg.seed)
        train_loader = make_loader(self.train_set, cfg.batch_size, shuffle=True, workers=cfg.workers, seed=cfg.seed,
                                   drop_last=len(self.train_set) >= cfg.batch_size * accelerator.num_processes)
        val_set = FinetuneDataset(data.val, data.classes, processor, with_masks=self.with_masks)
        val_loader = make_loader(val_set, cfg.eval_batch_size, shuffle=False, workers=cfg.workers, seed=cfg.seed)
        optimizer = torch.optim.AdamW(self._parameter_groups(model), betas=cfg.adam_betas, eps=cfg.adam_eps)
        self.model, self.optimizer, self.train_loader, self.val_loader = accelerator.prepare(
            model, optimizer, train_loader, val_loader)
        if len(self.train_loader) == 0:
            raise StageError(f"{len(self.train_set)} labelled training images: fewer than one batch per process")
        self.plan = plan_steps(cfg, len(self.train_loader), accelerator.num_processes)
        # Stepped by hand once per optimizer step (as in devide train).
        self.scheduler = get_cosine_schedule_with_warmup(optimizer, self.plan.warmup_steps, self.plan.total_steps)
        self.progress = TrainingProgress()
        accelerator.register_for_checkpointing(self.scheduler, self.progress)

    def _parameter_groups(self, model: FinetuneModel) -> list[dict[str, Any]]:
        """Tower at ``learning_rate``, the new head at ``head_learning_rate``; no decay on biases and norms."""
        groups = [{**g, "lr": self.cfg.learning_rate} for g in parameter_groups(model.tower, self.cfg.weight_decay)]
        groups += [{**g, "lr": self.cfg.head_learning_rate} for g in parameter_groups(model.head, self.cfg.weight_decay)]
        return [g for g in groups if g["params"]]

    def warm_text(self) -> None:  # no text tower in fine-tuning
        return None

    # ------------------------------------------------------------------ steps
    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Loss terms of one batch (``loss`` is the total)."""
        output = self.model(batch["pixel_values"])
        if self.segmentation:
            loss, terms = dice_bce_loss(output["logits"], batch["masks"], batch["mask_known"])
            return {"loss": loss, **terms}
        loss_bce = masked_bce(output["logits"], batch["labels"], self.cfg.uncertain_policy)
        terms = {"loss": loss_bce, "loss_bce": loss_bce.detach()}
        if self.variant.align_weight > 0:
            active = (batch["labels"] == 1) & batch["mask_known"]
            loss_align = alignment_loss(output["maps"], batch["masks"], active)
            terms["loss"] = loss_bce + self.variant.align_weight * loss_align
            terms["loss_align"] = loss_align.detach()
        return terms

    def train_step(self, batch: dict[str, Any]) -> None:
        cfg, accelerator = self.cfg, self.accelerator
        with accelerator.accumulate(self.model):
            terms = self.losses(batch)
            accelerator.backward(terms["loss"])
            if accelerator.sync_gradients and cfg.max_grad_norm:
                accelerator.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        for name, value in terms.items():
            self.loss_sums[name] = self.loss_sums[name] + value.detach().float().cpu()
        self.loss_sums["micro_batches"] = self.loss_sums["micro_batches"] + 1

    def validate(self) -> None:
        """Mean validation loss (over processes), logged and kept in the summary."""
        if len(self.data.val) == 0:
            return
        self.model.eval()
        total, batches = torch.zeros((), device=self.accelerator.device), 0
        with torch.no_grad():
            for batch in self.val_loader:
                total = total + self.losses(batch)["loss"].detach().float()
                batches += 1
        self.model.train()
        mean = self.accelerator.reduce(total / max(batches, 1), reduction="mean").item()
        self.accelerator.log({"val/loss": mean}, step=self.progress.step)
        self.summary["validation"].append({"step": self.progress.step, "val/loss": round(mean, 6)})

    # ------------------------------------------------------------------ prediction
    def predict(self, records: list[EvalRecord]) -> PredictionSet:
        """Predictions for ``records`` (sharded over processes, gathered in order on every process)."""
        cfg, accelerator = self.cfg, self.accelerator
        out = PredictionSet()
        if not records:
            return out
        dataset = FinetuneDataset(records, self.data.classes, self.data.processor, with_masks=self.segmentation)
        loader = accelerator.prepare(make_loader(dataset, cfg.eval_batch_size, shuffle=False, workers=cfg.workers,
                                                 seed=cfg.seed))
        model = accelerator.unwrap_model(self.model)
        model.eval()
        parts: dict[str, list[np.ndarray]] = {}
        with torch.no_grad():
            for batch in loader:
                output = model(batch["pixel_values"])
                gathered = accelerator.gather_for_metrics(self._batch_outputs(batch, output))
                for key, value in gathered.items():
                    parts.setdefault(key, []).append(value.cpu().numpy())
        model.train()
        merged = {k: np.concatenate(v) for k, v in parts.items()}
        order = np.argsort(merged.pop("index"), kind="stable")
        for key, value in merged.items():
            setattr(out, key, value[order] if key != "known" else value[order].astype(bool))
        return out

    def _batch_outputs(self, batch: dict[str, Any], output: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        keep = {"index": batch["index"], "frames": batch["frames"]}
        if self.segmentation:
            pred = output["logits"].float().sigmoid() >= self.cfg.threshold
            target = batch["masks"].bool()
            keep["counts"] = torch.stack([(pred & target).sum((-2, -1)), pred.sum((-2, -1)),
                                          target.sum((-2, -1))], dim=1).float()
            keep["known"] = batch["mask_known"].to(torch.uint8)  # gloo gathers no bool tensors
        else:
            keep["probs"] = output["logits"].float().sigmoid()
            if "maps" in output:
                keep["maps"] = output["maps"].float()
        return keep

    # ------------------------------------------------------------------ save
    def save(self) -> None:
        """Main process: the fine-tuned weights (safetensors) + a description, and the training summary."""
        from safetensors.torch import save_file

        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if self.cfg.save_models:
                folder = self.work_dir / MODEL_DIR
                folder.mkdir(parents=True, exist_ok=True)
                state = {k: v.detach().cpu().contiguous() for k, v in accelerator.unwrap_model(self.model)
                         .state_dict().items()}
                save_file(state, str(folder / WEIGHTS))
                description = {"variant": self.variant.name, "task": self.cfg.task, "head": self.cfg.head,
                               "classes": self.data.classes, "vision_config": self.data.vision_config.to_dict()}
                (folder / "finetune_config.json").write_text(json.dumps(description, indent=1) + "\n")
                self.data.processor.save_pretrained(str(folder))
            for key in ("itc_candidates", "knowledge_source"):
                self.summary.pop(key, None)
            write_json_atomic(self.work_dir / SUMMARY, self.summary)
            if not self.cfg.keep_checkpoints_at_end:
                shutil.rmtree(self.work_dir / checkpoints.CHECKPOINTS, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.end_training()


def variant_dir(work_dir: Path, variant: Variant) -> Path:
    return Path(work_dir) / "runs" / variant.name
