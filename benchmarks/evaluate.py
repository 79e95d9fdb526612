"""Zero-shot throughput (images/s) with cached vs uncached knowledge embeddings, measured side by side.

    .venv/bin/python benchmarks/evaluate.py [--images 64] [--batch-size 16] [--queries 14] [--sentences 8]

"cached": the knowledge sentences are encoded once (the model's sentence-embedding cache, what `devide
evaluate` uses); "uncached": the cache is cleared before every batch, so every batch re-encodes every sentence
through the text tower (what a naive loop over ``predict`` with a trainable text tower does). Both runs score the
same images with the same queries on a tiny from-scratch vision tower and the shipped MiniLM text tower; the
outputs are checked to agree. Writes benchmarks/results/evaluate.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from devide.evaluation.zero_shot import knowledge_cached
from devide.modeling import DevideConfig, DevideModel

RESULTS = Path(__file__).parent / "results" / "evaluate.json"


def build(queries: int, sentences: int) -> tuple[DevideModel, dict[str, list[str]]]:
    torch.manual_seed(0)
    model = DevideModel(DevideConfig(vision_preset="tiny", fusion_layers=2, embed_dim=128, freeze_text=False))
    model.eval()
    descriptions = {f"finding {q}": [f"finding {q} appears as opacity number {s} in the lower zone" for s in
                                     range(sentences)] for q in range(queries)}
    return model, descriptions


def run(model: DevideModel, descriptions: dict, pixels: torch.Tensor, batch_size: int, cached: bool) -> tuple[float, np.ndarray]:
    """Seconds for one pass over ``pixels`` and the probabilities [N, K]."""
    model.clear_text_cache()
    outputs = []
    start = time.perf_counter()
    with knowledge_cached(model, enabled=cached):
        for first in range(0, len(pixels), batch_size):
            if not cached:
                model.clear_text_cache()
            outputs.append(model.predict(pixels[first:first + batch_size], descriptions=descriptions).probs)
    return time.perf_counter() - start, torch.cat(outputs).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--queries", type=int, default=14)
    parser.add_argument("--sentences", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, descriptions = build(args.queries, args.sentences)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (256, 256), dtype=np.uint8)) for _ in range(args.images)]
    pixels = model.image_processor()(images)["pixel_values"]
    run(model, descriptions, pixels[: args.batch_size], args.batch_size, cached=True)  # warm-up
    uncached_s, uncached = run(model, descriptions, pixels, args.batch_size, cached=False)
    cached_s, cached = run(model, descriptions, pixels, args.batch_size, cached=True)
    result = {
        "images": args.images, "batch_size": args.batch_size, "queries": args.queries,
        "sentences_per_query": args.sentences, "threads": args.threads, "device": "cpu",
        "machine": platform.processor() or platform.machine(),
        "uncached_images_per_s": round(args.images / uncached_s, 2),
        "cached_images_per_s": round(args.images / cached_s, 2),
        "speedup": round(uncached_s / cached_s, 2),
        "max_abs_prob_difference": float(np.abs(cached - uncached).max()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
