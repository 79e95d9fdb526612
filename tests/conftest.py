"""Test-wide settings: offline hubs, quiet progress bars, bounded threads (2-core machines)."""

import os

# Set before anything imports huggingface_hub/transformers: a hub id must fail fast, never download.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("DEVIDE_QUIET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")
