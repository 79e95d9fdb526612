"""``devide train``: the Stage wrapper around :mod:`devide.training.trainer`.

One process: ``devide train --config train.yaml``. Several GPUs or nodes: ``accelerate launch --config_file
accelerate_config.yaml -m devide train --config train.yaml`` (every process runs the stage; only rank 0 writes
the artifact's manifest and promotes ``<out>.partial/`` to ``<out>/``). Checkpoints live in the work folder
``<out>.partial/checkpoints/``, which survives an interruption and is reused when config and inputs are
unchanged: rerunning the same command resumes from the newest checkpoint (``--resume latest``, the default).

Artifact: ``model/`` (save_pretrained: safetensors weights, config, knowledge.json, tokenizer,
preprocessor_config.json), ``train_summary.json``, ``logs/`` (tensorboard), config.resolved.yaml, manifest.json,
stage.log.
"""

from __future__ import annotations

from devide.stage import Stage
from devide.training.config import VOLATILE_FIELDS, TrainConfig

STAGE = Stage(
    name="train",
    config_cls=TrainConfig,
    run="devide.training.trainer:run",
    help="pretrain the DeViDe model with Accelerate (use `accelerate launch -m devide train` for many GPUs)",
    input_fields=("dataset", "knowledge", "vocabulary", "init_from"),
    volatile_fields=VOLATILE_FIELDS,
    check="devide.checks:check_train",
    preflight="devide.preflight:check_training",
    code=("devide.training", "devide.modeling", "devide.data.loading", "devide.data.image_io", "knowledge"),
)
