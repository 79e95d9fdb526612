"""Each loss term against values computed by hand on tiny tensors; masking semantics; cross-process gathering."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from devide.modeling import losses


def _bce(logit: float, target: float) -> float:
    """-[t log σ(x) + (1 - t) log(1 - σ(x))] written out."""
    sigma = 1.0 / (1.0 + math.exp(-logit))
    return -(target * math.log(sigma) + (1 - target) * math.log(1 - sigma))


LOGITS = torch.tensor([[0.0, 2.0, -0.5], [-1.0, 1.5, 0.3]])
LABELS = torch.tensor([[1, -1, -100], [0, -100, -1]])


@pytest.mark.parametrize("policy, expected_pairs", [
    ("ignore", [(0.0, 1), (-1.0, 0)]),
    ("positive", [(0.0, 1), (2.0, 1), (-1.0, 0), (0.3, 1)]),
    ("negative", [(0.0, 1), (2.0, 0), (-1.0, 0), (0.3, 0)]),
    ("soft", [(0.0, 1), (2.0, 0.5), (-1.0, 0), (0.3, 0.5)]),
])
def test_masked_bce_matches_hand_computation(policy, expected_pairs):
    expected = sum(_bce(x, t) for x, t in expected_pairs) / len(expected_pairs)
    value = losses.masked_bce(LOGITS, LABELS, policy, soft_target=0.5)
    assert value.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("weight", [1.0, 0.25])
def test_unmentioned_weight_reads_not_mentioned_as_absent(weight):
    # mentioned pairs weigh 1 (uncertain ignored), the two not-mentioned pairs (2.0 and -0.5) are absent * weight
    weighted = [(0.0, 1, 1.0), (-1.0, 0, 1.0), (-0.5, 0, weight), (1.5, 0, weight)]
    expected = sum(w * _bce(x, t) for x, t, w in weighted) / sum(w for _, _, w in weighted)
    logits = torch.tensor([[0.0, 2.0, -0.5], [-1.0, 1.5, 0.3]])
    labels = torch.tensor([[1, -1, -100], [0, -100, -1]])
    value = losses.masked_bce(logits, labels, "ignore", unmentioned_weight=weight)
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_not_mentioned_entities_get_no_gradient_from_bce():
    logits = LOGITS.clone().requires_grad_(True)
    losses.masked_bce(logits, LABELS, "positive").backward()
    not_mentioned = LABELS == losses.NOT_MENTIONED
    assert torch.all(logits.grad[not_mentioned] == 0)
    assert torch.all(logits.grad[~not_mentioned] != 0)
    # uncertain is masked too under the default policy
    logits.grad = None
    losses.masked_bce(logits, LABELS, "ignore").backward()
    assert torch.all(logits.grad[LABELS < 0] == 0)


def test_bce_with_nothing_mentioned_is_zero_but_attached():
    logits = torch.randn(2, 3, requires_grad=True)
    value = losses.masked_bce(logits, torch.full((2, 3), -100), "ignore")
    assert value.item() == 0.0 and value.requires_grad


def test_check_labels_rejects_bad_codes_and_shapes():
    with pytest.raises(ValueError, match="codes outside"):
        losses.check_labels(torch.tensor([[1, 2]]), 2)
    with pytest.raises(ValueError, match="shape"):
        losses.check_labels(torch.tensor([[1, 0, 0]]), 2)
    with pytest.raises(ValueError, match="integer"):
        losses.check_labels(torch.tensor([[1.0, 0.0]]), 2)


def test_itc_symmetric_infonce_by_hand():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    scale = torch.tensor(2.0)
    value, logits = losses.itc_loss(images, texts, scale)
    sims = [[0.6, 0.0], [0.8, 1.0]]  # sims[i][j] = image i . text j
    i2t = [-2 * sims[i][i] + math.log(sum(math.exp(2 * sims[i][j]) for j in range(2))) for i in range(2)]
    t2i = [-2 * sims[j][j] + math.log(sum(math.exp(2 * sims[i][j]) for i in range(2))) for j in range(2)]
    assert value.item() == pytest.approx((sum(i2t) + sum(t2i)) / 4, rel=1e-6)
    assert logits.shape == (2, 2)


def test_itc_rows_without_report_are_neither_anchor_nor_negative():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    value, _ = losses.itc_loss(images, texts, torch.tensor(1.0), valid=torch.tensor([True, True, False]))
    expected, _ = losses.itc_loss(images[:2], texts[:2], torch.tensor(1.0))
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)


def test_multi_positive_nce_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.0, 0.0]])
    positives = torch.tensor([[True, True, False], [False, False, False]])  # second anchor: no positive
    log_z = math.log(math.exp(1) + math.exp(2) + math.exp(3))
    expected = -((1 - log_z) + (2 - log_z)) / 2
    assert losses.multi_positive_nce(logits, positives).item() == pytest.approx(expected, rel=1e-6)
    # a non-candidate column leaves the softmax
    candidates = torch.tensor([[True, True, False], [True, True, True]])
    log_z2 = math.log(math.exp(1) + math.exp(2))
    expected2 = -((1 - log_z2) + (2 - log_z2)) / 2
    assert losses.multi_positive_nce(logits, positives, candidates).item() == pytest.approx(expected2, rel=1e-6)


def _bce(logit: float, target: float) -> float:
    return -(target * math.log(1 / (1 + math.exp(-logit))) + (1 - target) * math.log(1 / (1 + math.exp(logit))))


def test_tnc_by_presence_by_hand():
    # 2 images, 2 entities. Entity 0 has two sentences, entity 1 one. Image 0: e0 present, e1 absent;
    # image 1: e0 absent, e1 not mentioned (left out). Each certain pair weighs 1, shared by its sentences.
    entity_embeds = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [1.0, 0.0]]])
    descriptions = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    owner = torch.tensor([0, 0, 1])
    labels = torch.tensor([[1, 0], [0, -100]])
    scale, bias = 3.0, -0.5
    value = losses.tnc_loss(entity_embeds, labels, descriptions, owner, torch.tensor(scale), torch.tensor(bias))
    pair_00 = (_bce(scale * 1.0 + bias, 1) + _bce(scale * 0.6 + bias, 1)) / 2  # present: pulled to both
    pair_01 = _bce(scale * 1.0 + bias, 0)  # absent: pushed from its one sentence
    pair_10 = (_bce(scale * 0.6 + bias, 0) + _bce(scale * 1.0 + bias, 0)) / 2
    assert value.item() == pytest.approx((pair_00 + pair_01 + pair_10) / 3, rel=1e-6)


def test_tnc_depends_on_the_image_not_on_the_entity_name():
    # The same projection scores differently when the label flips: an image-blind projection cannot win.
    embeds = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])
    descriptions, owner = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    one = torch.tensor(4.0), torch.tensor(0.0)
    both_present = losses.tnc_loss(embeds, torch.tensor([[1], [1]]), descriptions, owner, *one)
    one_absent = losses.tnc_loss(embeds, torch.tensor([[1], [0]]), descriptions, owner, *one)
    assert one_absent.item() > both_present.item() + 1.0
    # with identical projections the best achievable is the label entropy (ln 2 for one of each)
    assert losses.tnc_floor(torch.tensor([[1], [0]])) == pytest.approx(math.log(2))
    best = min(losses.tnc_loss(embeds, torch.tensor([[1], [0]]), descriptions, owner, torch.tensor(4.0),
                               torch.tensor(b)).item() for b in (-6.0, -4.0, -2.0, 0.0))
    assert best == pytest.approx(math.log(2), rel=1e-6)


def test_tnc_floor_weights_entities_by_certain_pairs():
    labels = torch.tensor([[1, 1, -100], [0, 1, -1], [0, 1, -1], [1, 1, 0]])
    # entity 0: 2 of 4 present (ln 2 per pair); entity 1: always present and entity 2: one pair (entropy 0)
    assert losses.tnc_floor(labels) == pytest.approx(4 * math.log(2) / 9, rel=1e-6)


def test_tnc_without_certain_pair_is_zero_and_attached():
    scale, bias = torch.tensor(2.0, requires_grad=True), torch.tensor(0.0, requires_grad=True)
    value = losses.tnc_loss(torch.randn(2, 2, 4), torch.tensor([[-1, -100], [-1, -100]]), torch.randn(3, 4),
                            torch.tensor([0, 1, 1]), scale, bias)
    value.backward()
    assert value.item() == 0.0 and scale.grad is not None and bias.grad is not None


def test_entity_tnc_pulls_present_entity_towards_all_its_descriptions():
    # the first, image-blind L_tnc (tnc_objective="entity"), kept for the ablation table
    entity_embeds = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    descriptions = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    owner = torch.tensor([0, 0, 1])
    labels = torch.tensor([[1, 0]])
    value = losses.tnc_entity_loss(entity_embeds, labels, descriptions, owner, torch.tensor(3.0))
    logits = [3 * 1.0, 3 * 0.6, 3 * 0.0]  # anchor (image 0, entity 0) against the three descriptions
    log_z = math.log(sum(math.exp(v) for v in logits))
    assert value.item() == pytest.approx(-((logits[0] - log_z) + (logits[1] - log_z)) / 2, rel=1e-6)


def test_pta_by_hand():
    # 2 images x 2 patches; entity 0 present in image 0, absent in image 1; entity 1 not mentioned anywhere.
    patches = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [0.8, 0.6]]])
    descriptions = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    owner = torch.tensor([0, 1])
    labels = torch.tensor([[1, -100], [0, -100]])
    gamma, scale = 2.0, 5.0
    value = losses.pta_loss(patches, labels, descriptions, owner, torch.tensor(scale), gamma)

    def score(image: int, sentence: int) -> float:  # smooth max over patches
        sims = [float(patches[image, n] @ descriptions[sentence]) for n in range(2)]
        return math.log(sum(math.exp(gamma * s) for s in sims)) / gamma

    logits = [scale * score(0, 0), scale * score(1, 0)]  # only sentence 0 (entity 0 is present somewhere)
    expected = -(logits[0] - math.log(sum(math.exp(v) for v in logits)))
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_gather_is_identity_in_one_process():
    x = torch.randn(3, 4)
    gathered, offset = losses.gather_with_grad(x)
    assert gathered is x and offset == 0


# ---------------------------------------------------------------------------------------------- two processes
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SHARD_SIZES = ([3, 3], [3, 2])  # equal shards, then a last partial batch


def _itc_worker(rank: int, world: int, port: int, images: torch.Tensor, texts: torch.Tensor, results) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for case, sizes in enumerate(SHARD_SIZES):
            start = sum(sizes[:rank])
            local_images = images[start:start + sizes[rank]].clone().requires_grad_(True)
            local_texts = texts[start:start + sizes[rank]].clone().requires_grad_(True)
            value, logits = losses.itc_loss(local_images, local_texts, torch.tensor(3.0))
            value.backward()
            results[(case, rank)] = (value.item(), local_images.grad.clone(), tuple(logits.shape),
                                     dist.get_world_size())
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_itc_negatives_gathered_across_two_processes():
    """Two gloo processes on loopback: each rank's loss spans all gathered negatives; with equal shards the
    gradients summed by the gather's backward equal world_size x the gradient of the single-process global loss
    (so DDP's average is exact); with a partial last batch the size-weighted rank losses give the global loss."""
    torch.manual_seed(0)
    total = 6
    images = torch.nn.functional.normalize(torch.randn(total, 4), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(total, 4), dim=-1)
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_itc_worker, args=(2, _free_port(), images, texts, results), nprocs=2, join=True)

    for case, sizes in enumerate(SHARD_SIZES):
        n = sum(sizes)
        global_images = images[:n].clone().requires_grad_(True)
        global_loss, _ = losses.itc_loss(global_images, texts[:n], torch.tensor(3.0))
        global_loss.backward()
        for rank in range(2):
            _, grad, logits_shape, world = results[(case, rank)]
            assert world == 2
            assert logits_shape == (sizes[rank], n)  # negatives from both processes
            if sizes[0] == sizes[1]:
                start = sum(sizes[:rank])
                torch.testing.assert_close(grad, global_images.grad[start:start + sizes[rank]] * 2,
                                           rtol=1e-5, atol=1e-6)
        weighted = sum(results[(case, rank)][0] * sizes[rank] for rank in range(2)) / n
        assert weighted == pytest.approx(global_loss.item(), rel=1e-5)


def test_itc_identical_reports_are_positives_not_negatives():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    texts = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    ids = torch.tensor([7, 7, 9])  # images 0 and 1 share a report text
    value, _ = losses.itc_loss(images, texts, torch.tensor(1.0), text_ids=ids)
    sims = (images @ texts.T).tolist()  # sims[i][j] = image i . text j

    def term(row: list[float], positives: list[int]) -> float:
        log_z = math.log(sum(math.exp(v) for v in row))
        return -sum(row[p] - log_z for p in positives) / len(positives)

    positives = [[0, 1], [0, 1], [2]]
    i2t = [term(sims[i], positives[i]) for i in range(3)]
    t2i = [term([sims[i][j] for i in range(3)], positives[j]) for j in range(3)]
    assert value.item() == pytest.approx((sum(i2t) / 3 + sum(t2i) / 3) / 2, rel=1e-6)
