"""One rank of the FSDP2 test (``torchrun --nproc_per_node 2``, gloo, CPU): what the trainer relies on under FSDP.

Shards DevideModel as ``accelerate_configs/fsdp.yaml`` does (every ViTLayer / BertLayer its own unit, then the
root), takes one AdamW step through the sharded model, then checks on rank 0 that (1) the full state dict
gathered from the shards (what ``accelerator.get_state_dict`` returns for FSDP2) loads into a plain model and
(2) the *wrapped* forward that in-training validation calls gives the same probabilities as ``predict`` of that
gathered model. Writes the figures to the JSON file named by argv[1].
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard

from devide.modeling import DevideConfig, DevideModel
from tests.devide.training.tiny_data import ENTITIES, TINY_MODEL

WRAPPED_LAYERS = ("ViTLayer", "BertLayer")  # fsdp_transformer_layer_cls_to_wrap in accelerate_configs/fsdp.yaml


def build() -> DevideModel:
    torch.manual_seed(0)
    model = DevideModel(DevideConfig(entities=ENTITIES, **TINY_MODEL, freeze_text=True))
    model.set_knowledge({e: [f"{e} description one", f"{e} description two"] for e in ENTITIES})
    return model


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = build()
    units = 0
    for module in model.modules():
        if type(module).__name__ in WRAPPED_LAYERS:
            fully_shard(module)
            units += 1
    fully_shard(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)

    generator = torch.Generator().manual_seed(100 + rank)  # each rank its own micro-batch
    pixels = torch.randn(4, 1, 32, 32, generator=generator)
    labels = torch.randint(0, 2, (4, len(ENTITIES)), generator=generator)
    model.train()
    loss = model(pixel_values=pixels, labels=labels, report_texts=["effusion", "heart", "air", "normal"]).loss
    loss.backward()
    optimizer.step()

    probe = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(7))  # same on every rank
    model.eval()
    with torch.no_grad():
        wrapped = model(pixel_values=probe, return_loss=False).logits.float().sigmoid()
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        plain = build()
        initial = {k: v.clone() for k, v in plain.state_dict().items()}
        missing, unexpected = plain.load_state_dict(full, strict=True)
        with torch.no_grad():
            predicted = plain.eval().predict(probe, entities=ENTITIES).probs.float()
        figures = {
            "world_size": world, "shard_units": units, "loss": float(loss),
            "keys_equal": sorted(full) == sorted(initial),
            "shapes_equal": all(tuple(full[k].shape) == tuple(initial[k].shape) for k in initial),
            "max_weight_change": max(float((full[k] - initial[k]).abs().max()) for k in initial),
            "max_prob_difference": float((wrapped - predicted).abs().max()),
            "missing": list(missing), "unexpected": list(unexpected),
        }
        with open(out_path, "w", encoding="utf-8") as handle:
            json.dump(figures, handle)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
