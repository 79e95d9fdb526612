"""The four DeViDe loss terms as pure functions of tensors (each equation is written out in docs/method.md).

Label codes (shared contract): 1 present, 0 absent, -1 uncertain, -100 not mentioned.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
import torch.nn.functional as F

PRESENT, ABSENT, UNCERTAIN, NOT_MENTIONED = 1, 0, -1, -100
VALID_LABELS = (PRESENT, ABSENT, UNCERTAIN, NOT_MENTIONED)


def full_precision(loss_fn):
    """Run a loss in float32 even under autocast (bf16 logits lose the small differences InfoNCE relies on,
    and masking with the float32 minimum would overflow bf16)."""

    @functools.wraps(loss_fn)
    def wrapper(first: torch.Tensor, *args, **kwargs):
        with torch.autocast(device_type=first.device.type, enabled=False):
            return loss_fn(first, *args, **kwargs)

    return wrapper


def check_labels(labels: torch.Tensor, num_entities: int) -> None:
    """Raise ValueError (one line) unless ``labels`` is an integer [B, E] tensor of the four label codes."""
    if labels.dim() != 2 or labels.shape[1] != num_entities:
        raise ValueError(f"labels must have shape [B, {num_entities}] (config.entities order), got {list(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor (1/0/-1/-100), got {labels.dtype}")
    bad = ~torch.isin(labels, torch.tensor(VALID_LABELS, device=labels.device))
    if bad.any():
        raise ValueError(f"labels contain codes outside {VALID_LABELS}: {sorted(set(labels[bad].tolist()))[:5]}")


def bce_targets(labels: torch.Tensor, uncertain_policy: str = "ignore", soft_target: float = 0.5,
                unmentioned_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets and per-pair weights for L_bce. labels [B, E] -> (targets float [B, E], weights float [B, E]).

    Present (1) and absent (0) weigh 1. Uncertain (-1): ``ignore`` weighs 0, ``positive`` -> target 1 (U-Ones),
    ``negative`` -> 0 (U-Zeros), ``soft`` -> ``soft_target``. Not mentioned (-100) is read as absent with weight
    ``unmentioned_weight``: 0 (default) masks it, as DeViDe does; 1 is MedKLIP's "not mentioned = absent".
    """
    targets = (labels == PRESENT).float()
    weights = ((labels == PRESENT) | (labels == ABSENT)).float()
    if unmentioned_weight:
        weights = torch.where(labels == NOT_MENTIONED, torch.full_like(weights, unmentioned_weight), weights)
    if uncertain_policy == "ignore":
        return targets, weights
    fill = {"positive": 1.0, "negative": 0.0, "soft": soft_target}.get(uncertain_policy)
    if fill is None:
        raise ValueError(f"unknown uncertain_policy {uncertain_policy!r}")
    uncertain = labels == UNCERTAIN
    return torch.where(uncertain, torch.full_like(targets, fill), targets), torch.where(uncertain, 1.0, weights)


@full_precision
def masked_bce(logits: torch.Tensor, labels: torch.Tensor, uncertain_policy: str = "ignore",
               soft_target: float = 0.5, unmentioned_weight: float = 0.0) -> torch.Tensor:
    """L_bce: weighted mean binary cross-entropy over (image, entity) pairs; by default only the pairs the
    report mentions count (see :func:`bce_targets`).

    logits, labels: [B, E]. Returns a scalar; 0 (still attached to the graph) when every weight is 0.
    """
    targets, weights = bce_targets(labels, uncertain_policy, soft_target, unmentioned_weight)
    per_pair = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
    return (per_pair * weights).sum() / weights.sum().clamp_min(1e-12)  # all weights 0 -> 0 / eps = 0


# ---------------------------------------------------------------------------------------------- distributed
def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: torch.Tensor, differentiable: bool = True) -> tuple[torch.Tensor, int]:
    """All ranks' rows of ``x`` [B_r, ...] concatenated in rank order, with gradient flowing back to each rank.

    Returns (gathered [sum_r B_r, ...], offset of this rank's rows). Batches of unequal size (a last partial
    batch) are padded for the collective and trimmed after. Single process: (x, 0), no communication.
    ``differentiable=False`` gathers without autograd (ids, masks).
    """
    if not _distributed():
        return x, 0
    import torch.distributed.nn.functional as dist_nn

    world, rank = dist.get_world_size(), dist.get_rank()
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes_list = [int(s.item()) for s in sizes]
    longest = max(sizes_list)
    padded = F.pad(x, (0, 0) * (x.dim() - 1) + (0, longest - x.shape[0])) if x.shape[0] < longest else x
    if differentiable:
        parts = dist_nn.all_gather(padded)
    else:
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
    gathered = torch.cat([part[:n] for part, n in zip(parts, sizes_list)], dim=0)
    return gathered, sum(sizes_list[:rank])


@full_precision
def itc_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
             valid: torch.Tensor | None = None,
             text_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """L_itc: symmetric InfoNCE between L2-normalised global image and report embeddings.

    image_embeds, text_embeds: [B, d] (this process's rows); logit_scale: scalar (already exponentiated);
    valid: bool [B] (rows without a report are neither anchors nor negatives); text_ids: long [B] identity of
    each report text: pairs whose reports are identical ("No acute cardiopulmonary process.") are positives
    of each other, not false negatives (None = all reports distinct). Candidates are gathered from every
    process (with gradient). Each process's loss covers its own anchors against all gathered candidates, so
    averaging the gradients over processes (DDP) gives the gradient of the global loss.
    Returns (loss scalar, logits_per_image [B, B_all]).
    """
    batch, device = image_embeds.shape[0], image_embeds.device
    if valid is None:
        valid = torch.ones(batch, dtype=torch.bool, device=device)
    all_images, offset = gather_with_grad(image_embeds)
    all_texts, _ = gather_with_grad(text_embeds)
    all_valid = gather_with_grad(valid, differentiable=False)[0]
    if text_ids is None:
        text_ids = torch.arange(batch, device=device) + offset
    all_ids = gather_with_grad(text_ids, differentiable=False)[0]
    positives = (text_ids[:, None] == all_ids[None, :]) & all_valid[None, :] & valid[:, None]  # [B, B_all]
    logits_i2t = logit_scale * image_embeds.float() @ all_texts.float().T
    logits_t2i = logit_scale * text_embeds.float() @ all_images.float().T
    candidates = all_valid[None, :].expand_as(positives)
    loss = (multi_positive_nce(logits_i2t, positives, candidates)
            + multi_positive_nce(logits_t2i, positives, candidates)) / 2
    return loss, logits_i2t


# ---------------------------------------------------------------------------------------------- multi-positive
def multi_positive_nce(logits: torch.Tensor, positives: torch.Tensor,
                       candidates: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-positive InfoNCE: mean over anchors of -mean_{p in P(a)} log softmax(logits[a])[p].

    logits: [A, M]; positives: bool [A, M]; candidates: bool [A, M] (columns allowed in the softmax; positives
    are always candidates). Anchors without a positive are skipped; returns 0 (attached) when none is left.
    """
    if candidates is not None:
        logits = logits.masked_fill(~(candidates | positives), torch.finfo(logits.dtype).min)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    counts = positives.sum(1)
    keep = counts > 0
    if not keep.any():
        return logits.sum() * 0.0
    per_anchor = -(log_prob * positives).sum(1)[keep] / counts[keep]
    return per_anchor.mean()


def tnc_floor(labels: torch.Tensor) -> float:
    """The lowest value :func:`tnc_loss` reaches without looking at the images: the label entropy.

    labels [B, E]. A model that ignores the image can at best predict each entity's prevalence p_e among the
    certain labels, which costs H(p_e) = -p log p - (1-p) log(1-p) per pair; the floor is the pair-weighted mean
    of H(p_e) (nats). Held-out L_tnc below it means the projection read the image.
    """
    certain = (labels == PRESENT) | (labels == ABSENT)
    counts = certain.sum(0).double()
    positives = (labels == PRESENT).sum(0).double()
    p = (positives / counts.clamp_min(1)).clamp(1e-12, 1 - 1e-12)
    entropy = -(p * p.log() + (1 - p) * (1 - p).log())
    return float((entropy * counts).sum() / counts.sum().clamp_min(1))


@full_precision
def tnc_loss(entity_embeds: torch.Tensor, labels: torch.Tensor, description_embeds: torch.Tensor,
             description_owner: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor) -> torch.Tensor:
    """L_tnc through the multi-label projection layer, by presence (image-dependent; docs/method.md §5).

    entity_embeds: [B, E, d] normalised per-entity projections of each image; labels: [B, E];
    description_embeds: [M, d] normalised description sentences; description_owner: long [M] entity index of
    each sentence; logit_scale, logit_bias: scalars. Every certain pair (b, e) (label 1 or 0) meets each sentence
    m of e with logit s·v_{b,e}·D_m + β and target y_{b,e}: the projection of an image is pulled toward all of
    e's descriptions when e is present and pushed away when it is absent. Each pair weighs 1 (its sentences
    share it). A per-pair sigmoid, so the loss of a pair does not depend on the rest of the batch and needs no
    gather across processes. Its floor without the image is :func:`tnc_floor`.
    """
    certain = (labels == PRESENT) | (labels == ABSENT)  # [B, E]
    keep = certain[:, description_owner]  # [B, M]
    if not keep.any():  # zero, yet attached to every input (DDP expects each parameter in the graph)
        return (entity_embeds.sum() + description_embeds.sum() + logit_scale + logit_bias) * 0.0
    own = entity_embeds.float()[:, description_owner]  # [B, M, d]: v_{b, owner(m)}
    logits = logit_scale * (own * description_embeds.float()[None]).sum(-1) + logit_bias  # [B, M]
    targets = (labels == PRESENT)[:, description_owner].float()
    per_sentence = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    sentences_per_entity = torch.bincount(description_owner, minlength=labels.shape[1]).float()  # [E]
    weights = keep.float() / sentences_per_entity[description_owner][None]  # each certain pair sums to 1
    return (per_sentence * weights).sum() / weights.sum()


@full_precision
def tnc_entity_loss(entity_embeds: torch.Tensor, labels: torch.Tensor, description_embeds: torch.Tensor,
                    description_owner: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """The first L_tnc, kept for the ablation table (``tnc_objective="entity"``); not image-dependent.

    Anchor = (image b, entity e) with labels[b, e] == 1; positives all sentences of e, negatives every
    sentence of any other entity. The projection only has to say *which* entity it is, so pure-noise images
    reach the same loss as informative ones (docs/method.md §5 shows the measurement).
    """
    anchor_b, anchor_e = torch.nonzero(labels == PRESENT, as_tuple=True)
    if anchor_b.numel() == 0:
        return (entity_embeds.sum() + description_embeds.sum() + logit_scale) * 0.0
    anchors = entity_embeds[anchor_b, anchor_e].float()  # [A, d]
    logits = logit_scale * anchors @ description_embeds.float().T  # [A, M]
    positives = description_owner.unsqueeze(0) == anchor_e.unsqueeze(1)
    return multi_positive_nce(logits, positives)


def patch_sentence_scores(patch_embeds: torch.Tensor, sentence_embeds: torch.Tensor,
                          gamma: float) -> torch.Tensor:
    """Image-sentence score as a smooth maximum over patches: (1/γ)·log Σ_n exp(γ·cos(p_n, s)).

    patch_embeds: [B, N, d] normalised; sentence_embeds: [S, d] normalised -> [S, B].
    """
    sims = torch.einsum("bnd,sd->sbn", patch_embeds.float(), sentence_embeds.float())
    return torch.logsumexp(gamma * sims, dim=-1) / gamma


@full_precision
def pta_loss(patch_embeds: torch.Tensor, labels: torch.Tensor, description_embeds: torch.Tensor,
             description_owner: torch.Tensor, logit_scale: torch.Tensor, gamma: float) -> torch.Tensor:
    """L_pta: patch tokens <-> description sentences of present entities (text-to-image, multi-positive).

    Anchor = each description sentence s of an entity present in at least one image of the batch. Candidates
    are the images whose label for that entity is certain (1 or 0); positives those where it is 1. Shapes as
    in ``tnc_loss``; patch_embeds [B, N, d].
    """
    present_entities = (labels == PRESENT).any(0)  # [E]
    keep = present_entities[description_owner]  # [M]
    if not keep.any():
        return (patch_embeds.sum() + description_embeds.sum() + logit_scale) * 0.0
    owner = description_owner[keep]
    scores = patch_sentence_scores(patch_embeds, description_embeds[keep], gamma)  # [S, B]
    entity_labels = labels.T[owner]  # [S, B]
    positives = entity_labels == PRESENT
    candidates = positives | (entity_labels == ABSENT)
    return multi_positive_nce(logit_scale * scores, positives, candidates)
