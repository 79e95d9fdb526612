"""Fine-tuning throughput (images/s) for classification and segmentation, and the pretrained-vs-random gap.

    .venv/bin/python benchmarks/finetune.py --model artifacts/demo/train/model [--phantom FOLDER] \\
        [--fraction 0.1] [--epochs 10] [--seg-epochs 30] [--workdir /tmp/finetune-bench]

Without ``--phantom`` it first writes its own evaluation sets with ``devide phantom`` (2,000 CheXpert and
2,000 SIIM images at 256 px, seed 1, no pretraining corpus): the demo's 500-image sets leave 10 % of the labels
at about a dozen images and a test split of a few dozen, where no gap can be told from noise.

Runs ``devide finetune`` (the real stage) on the phantom CheXpert set (classification, full fine-tune and linear
probe) and the phantom SIIM-ACR set (segmentation), each with a pretrained and a randomly initialised image tower
on the same labelled selection, side by side in one process. Reports training images/s per variant (from the
trainer's summary), test macro AUC with its bootstrap CI, Dice (positive images and all images), and the
pretrained-minus-random gaps. Writes benchmarks/results/finetune.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from devide.finetune.config import FinetuneConfig
from devide.finetune.stage import STAGE
from devide.stage import execute_stage

RESULTS = Path(__file__).parent / "results" / "finetune.json"


def finetune(args: argparse.Namespace, dataset: str, task: str, modes: list[str]) -> dict:
    out = args.workdir / f"{dataset}-{task}"
    cfg = FinetuneConfig(model=args.model, dataset=dataset, root=args.phantom / dataset, task=task,
                         fraction=args.fraction, modes=modes,
                         epochs=args.seg_epochs if task == "segmentation" else args.epochs, batch_size=args.batch_size,
                         workers=args.workers, bootstrap=200, tensorboard=False, save_models=False, overlays=4,
                         seed=args.seed, out=out)
    started = time.perf_counter()
    execute_stage(STAGE, cfg, force=True, quiet=True)
    results = json.loads((out / "results.json").read_text())
    return {"seconds": round(time.perf_counter() - started, 1), "setting": {
        k: results["setting"][k] for k in ("fraction", "selected_images", "test_images", "split_protocol")},
        "variants": results["variants"], "gaps": results["comparisons"]["pretrained_minus_random"]}


def benchmark_phantom(workdir: Path, n_eval: int) -> Path:
    """The benchmark's own phantom CheXpert + SIIM sets (the phantom stage; skipped when up to date)."""
    from devide.data.phantom.stage import STAGE as PHANTOM
    from devide.data.phantom.stage import PhantomConfig

    out = workdir / "phantom"
    execute_stage(PHANTOM, PhantomConfig(n_studies=1, n_eval=n_eval, seed=1, size=256, eval_sets=["chexpert", "siim"],
                                         workers=0, out=out), quiet=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("artifacts/demo/train/model"))
    parser.add_argument("--phantom", type=Path, default=None,
                        help="a phantom artifact with chexpert/ and siim/ (default: write the benchmark's own)")
    parser.add_argument("--n-eval", type=int, default=2000, help="images per set of the benchmark's own phantom")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/devide-finetune-bench"))
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--epochs", type=float, default=10, help="classification epochs")
    parser.add_argument("--seg-epochs", type=float, default=30, help="segmentation epochs")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.phantom is None:
        args.phantom = benchmark_phantom(args.workdir, args.n_eval)
    for path in (args.model, args.phantom / "chexpert", args.phantom / "siim"):
        if not path.exists():
            raise SystemExit(f"not found: {path} (run the demo pipeline or pass --model/--phantom)")
    torch.set_num_threads(args.threads)
    report = {
        "classification": finetune(args, "chexpert", "classification", ["full", "probe"]),
        "segmentation": finetune(args, "siim", "segmentation", ["full"]),
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": args.threads,
                    "cpu": platform.processor() or platform.machine(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    for task in ("classification", "segmentation"):
        print(f"{task} ({report[task]['seconds']} s, {report[task]['setting']}):")
        for name, row in report[task]["variants"].items():
            score = {k: row.get(k) for k in ("auc", "auc_ci", "dice_positive", "dice_positive_ci", "dice_all")
                     if row.get(k) is not None}
            print(f"  {name}: {row['images_per_second']} images/s, {score}")
        for pair, gap in report[task]["gaps"].items():
            print(f"  gap {pair}: {gap}")
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    main()
