"""AVC InfoNCE and AVSA losses: formulas, candidate sets, metrics, curriculum and the global batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.distributed import run_distributed
from trainer.losses import avsa_loss, info_nce, pretext_loss, stage_for_epoch
from trainer.models import AVSAOutput, Embeddings

SETTINGS = settings(max_examples=25, deadline=None)


def unit(*shape: int, seed: int) -> torch.Tensor:
    """Random unit vectors along the last dim, float64 so formulas can be compared tightly."""
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def cross_entropy(logits: list[float], label: int) -> float:
    """-log softmax(logits)[label], written out."""
    top = max(logits)
    return -(logits[label] - top - math.log(sum(math.exp(z - top) for z in logits)))


@SETTINGS
@given(n=st.integers(1, 8), dim=st.integers(2, 16), tau=st.floats(0.03, 1.0), seed=st.integers(0, 2**31 - 1))
def test_info_nce_equals_log_softmax_formula(n: int, dim: int, tau: float, seed: int) -> None:
    q, t = unit(n, dim, seed=seed), unit(n, dim, seed=seed + 1)
    loss, acc = info_nce(q, t, tau)

    qn, tn = q.numpy(), t.numpy()
    rows = [[float(qn[i] @ tn[j]) / tau for j in range(n)] for i in range(n)]
    expected = np.mean([cross_entropy(rows[i], i) for i in range(n)])
    hits = [all(rows[i][i] > rows[i][j] for j in range(n) if j != i) for i in range(n)]
    assert loss.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert acc.item() == pytest.approx(np.mean(hits))


@SETTINGS
@given(
    clips=st.integers(1, 4),
    views=st.integers(1, 4),
    dim=st.integers(2, 12),
    tau=st.floats(0.03, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_avsa_loss_equals_explicit_candidate_sets(
    clips: int, views: int, dim: int, tau: float, seed: int
) -> None:
    q, t = unit(clips, views, dim, seed=seed), unit(clips, views, dim, seed=seed + 1)
    loss, avc_acc, avsa_acc = avsa_loss(q, t, tau)

    qn, tn = q.numpy(), t.numpy()
    losses, avc_hits, avsa_hits = [], [], []
    for b in range(clips):
        for k in range(views):
            score = np.einsum("e,cje->cj", qn[b, k], tn) / tau  # against every target (c, j)
            positive = score[b, k]
            hard = [score[b, j] for j in range(views) if j != k]
            easy = [score[c, k] for c in range(clips) if c != b]
            losses.append(cross_entropy([positive, *hard, *easy], 0))
            avc_hits.append(all(positive > s for s in easy))
            avsa_hits.append(all(positive > s for s in hard))
    assert loss.item() == pytest.approx(np.mean(losses), rel=1e-9, abs=1e-12)
    assert avc_acc.item() == pytest.approx(np.mean(avc_hits))
    assert avsa_acc.item() == pytest.approx(np.mean(avsa_hits))


@pytest.mark.parametrize("clips,views", [(8, 1), (3, 4)])
def test_perfect_alignment_gives_zero_loss_and_full_accuracy(clips: int, views: int) -> None:
    # Identical audio and video embeddings, mutually orthogonal: cosine 1 vs 0, logit gap 1/τ ≈ 14.
    e = torch.eye(clips * views, dtype=torch.float64).reshape(clips, views, -1)
    loss, avc_acc, avsa_acc = avsa_loss(e, e.clone(), 0.07)
    assert loss.item() < 1e-4 and avc_acc.item() == 1 and avsa_acc.item() == 1
    flat = e.flatten(0, 1)
    loss, acc = info_nce(flat, flat.clone(), 0.07)
    assert loss.item() < 1e-4 and acc.item() == 1


def confusable_viewpoints(clips: int, views: int) -> torch.Tensor:
    """Targets ``[B, K, E]``: clips far apart (orthogonal), viewpoints of one clip nearly equal."""
    e = torch.eye(clips + views, dtype=torch.float64)
    clip_part = e[:clips, None, :]  # [B, 1, E]
    view_part = e[None, clips:, :]  # [1, K, E]
    return F.normalize(clip_part + 0.2 * view_part, dim=-1)


def test_hard_negatives_are_the_clips_other_viewpoints() -> None:
    tau, t = 0.07, confusable_viewpoints(clips=4, views=3)
    c = 1 / 1.04  # cosine between two viewpoints of one clip; across clips it is 0
    # Easy negatives sit at logit 0, ~e^-14 below the positive: the loss is that of the clip's own
    # 3 viewpoints alone, the positive at 1/τ against 2 hard negatives at c/τ.
    aligned_loss, avc_acc, avsa_acc = avsa_loss(t, t.clone(), tau)
    assert aligned_loss.item() == pytest.approx(math.log(1 + 2 * math.exp((c - 1) / tau)), rel=1e-5)
    assert (avc_acc.item(), avsa_acc.item()) == (1, 1)

    # Each query now points at the clip's *next* viewpoint: right clip, wrong direction. Only the
    # hard negatives can expose that, and they do: AVSA-acc falls to 0 while AVC-acc stays 1.
    loss, avc_acc, avsa_acc = avsa_loss(t.roll(1, dims=1), t, tau)
    assert loss.item() == pytest.approx(math.log(2 + math.exp((1 - c) / tau)), rel=1e-5)
    assert (avc_acc.item(), avsa_acc.item()) == (1, 0)


def test_other_viewpoints_of_other_clips_are_not_candidates() -> None:
    # Query (0,0) equals target (1,1), which is another clip at another viewpoint. If that target
    # were a candidate, queries (0,0) and (1,1) would each face a negative equal to their positive
    # and the loss would be at least log(2)/2; as a non-candidate it does not matter.
    e = torch.eye(3, dtype=torch.float64)
    t = torch.stack([torch.stack([e[0], e[1]]), torch.stack([e[2], e[0]])])  # [B=2, K=2, 3]
    loss, avc_acc, avsa_acc = avsa_loss(t, t.clone(), 0.07)
    assert loss.item() < 1e-4 and (avc_acc.item(), avsa_acc.item()) == (1, 1)


def test_collapsed_embeddings_score_zero_accuracy() -> None:
    same = F.normalize(torch.ones(3, 2, 4, dtype=torch.float64), dim=-1)
    _, avc_acc, avsa_acc = avsa_loss(same, same.clone(), 0.07)
    _, acc = info_nce(same[:, 0], same[:, 0].clone(), 0.07)
    assert (avc_acc.item(), avsa_acc.item(), acc.item()) == (0, 0, 0)


def test_bf16_embeddings_are_compared_in_fp32() -> None:
    q, t = unit(4, 3, 8, seed=0).bfloat16(), unit(4, 3, 8, seed=1).bfloat16()
    loss, *_ = avsa_loss(q, t, 0.07)
    exact, *_ = avsa_loss(q.double(), t.double(), 0.07)  # the same bf16 values, in fp64
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(exact.item(), rel=1e-5)
    loss, _ = info_nce(q[:, 0], t[:, 0], 0.07)
    exact, _ = info_nce(q[:, 0].double(), t[:, 0].double(), 0.07)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(exact.item(), rel=1e-5)


def random_output(clips: int, views: int, dim: int, seed: int) -> AVSAOutput:
    return AVSAOutput(
        viewpoints=Embeddings(*(unit(clips, views, dim, seed=seed + i) for i in range(4))),
        clips=Embeddings(*(unit(clips, dim, seed=seed + 10 + i) for i in range(4))),
    )


def test_pretext_loss_averages_both_directions_of_the_stage() -> None:
    out, tau = random_output(3, 2, 5, seed=0), 0.1
    vp, c = out.viewpoints, out.clips

    # AVC on the trunks (the reference's form): per viewpoint, audio against video and back, the other
    # clips' same viewpoint the negatives; no context predictions.
    loss, metrics = pretext_loss(out, "avc", tau, "trunks")
    pairs = ((vp.audio, vp.video), (vp.video, vp.audio))
    expected = sum(info_nce(q[:, k], t[:, k], tau)[0] for q, t in pairs for k in range(2)) / 4
    avsa_acc = (avsa_loss(vp.audio, vp.video, tau)[2] + avsa_loss(vp.video, vp.audio, tau)[2]) / 2
    assert loss.item() == pytest.approx(expected.item())
    assert metrics["avsa_acc"].item() == pytest.approx(avsa_acc.item())

    # AVC on the context predictions (the ablation).
    loss, metrics = pretext_loss(out, "avc", tau, "context")
    expected = (info_nce(c.video_pred, c.video, tau)[0] + info_nce(c.audio_pred, c.audio, tau)[0]) / 2
    avsa_acc = (avsa_loss(vp.video_pred, vp.video, tau)[2] + avsa_loss(vp.audio_pred, vp.audio, tau)[2]) / 2
    assert loss.item() == pytest.approx(expected.item())
    assert metrics["avsa_acc"].item() == pytest.approx(avsa_acc.item())

    for form in ("trunks", "context"):  # AVSA does not depend on the AVC form
        loss, metrics = pretext_loss(out, "avsa", tau, form)  # type: ignore[arg-type]
        expected = (
            avsa_loss(vp.video_pred, vp.video, tau)[0] + avsa_loss(vp.audio_pred, vp.audio, tau)[0]
        ) / 2
        assert loss.item() == pytest.approx(expected.item())
        assert set(metrics) == {"loss", "avc_acc", "avsa_acc"}

    with pytest.raises(ValueError, match="stage"):
        pretext_loss(out, "both", tau, "trunks")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="AVC form"):
        pretext_loss(out, "avc", tau, "pooled")  # type: ignore[arg-type]


def test_curriculum_switches_after_avc_epochs() -> None:
    assert [stage_for_epoch(e, avc_epochs=2) for e in range(4)] == ["avc", "avc", "avsa", "avsa"]
    assert stage_for_epoch(0, avc_epochs=0) == "avsa"  # AVSA from scratch


# --- the global batch on 2 ranks ---------------------------------------------------------------

CLIPS_PER_RANK, VIEWS, DIM, FEATURES, TAU = 3, 2, 6, 5, 0.07


def global_batch(world_size: int) -> dict[str, torch.Tensor]:
    """The same global batch on every process: embeddings, and inputs of a shared linear layer."""
    n = world_size * CLIPS_PER_RANK
    return {
        "query": unit(n, VIEWS, DIM, seed=1),
        "target": unit(n, VIEWS, DIM, seed=2),
        "x_query": unit(n, VIEWS, FEATURES, seed=3),
        "x_target": unit(n, VIEWS, FEATURES, seed=4),
        "weight": unit(DIM, FEATURES, seed=5),
    }


def losses_and_grads(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Losses, accuracies and gradients of (a) both losses w.r.t. the embeddings, (b) a linear layer
    shared by queries and targets w.r.t. its weight — computed on ``batch`` by whoever calls it."""
    result = {}
    per_clip = lambda q, t: info_nce(q[:, 0], t[:, 0], TAU)  # noqa: E731
    per_viewpoint = lambda q, t: avsa_loss(q, t, TAU)  # noqa: E731
    for name, loss_fn in (("avc", per_clip), ("avsa", per_viewpoint)):
        q = batch["query"].clone().requires_grad_()
        t = batch["target"].clone().requires_grad_()
        loss, *accs = loss_fn(q, t)
        loss.backward()
        result |= {f"{name}_loss": loss.detach(), f"{name}_grad_q": q.grad, f"{name}_grad_t": t.grad}
        result |= {f"{name}_acc{i}": acc for i, acc in enumerate(accs)}
    w = batch["weight"].clone().requires_grad_()
    loss, *_ = avsa_loss(
        F.normalize(batch["x_query"] @ w.T, dim=-1), F.normalize(batch["x_target"] @ w.T, dim=-1), TAU
    )
    loss.backward()
    result["weight_grad"] = w.grad
    return result


def global_batch_rank(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    rows = slice(rank * CLIPS_PER_RANK, (rank + 1) * CLIPS_PER_RANK)
    batch = global_batch(world_size)
    local = {k: v if k == "weight" else v[rows] for k, v in batch.items()}
    result = losses_and_grads(local)
    # What DDP / DeepSpeed do with parameter gradients: average them over ranks.
    torch.distributed.all_reduce(result["weight_grad"])
    result["weight_grad"] /= world_size
    return result


def test_global_batch_loss_and_gradients_match_one_process() -> None:
    world_size = 2
    ranks = run_distributed(global_batch_rank, world_size)
    single = losses_and_grads(global_batch(world_size))

    for key in single:
        if key.endswith(("_loss", "_acc0", "_acc1")):
            # Equal local batches: the global mean is the mean of the ranks' means.
            got = torch.stack([r[key] for r in ranks]).mean()
            torch.testing.assert_close(got, single[key], rtol=1e-10, atol=1e-12, msg=key)
        elif key == "weight_grad":
            # After the data-parallel average, every rank holds the single-process gradient.
            for r in ranks:
                torch.testing.assert_close(r[key], single[key], rtol=1e-10, atol=1e-12, msg=key)
        else:
            # A rank's loss is a mean over world_size× fewer queries, and the gather's backward sums
            # every rank's contribution into the local targets: local grads are world_size× the
            # single-process grads of the same rows, which the data-parallel average then divides out.
            got = torch.cat([r[key] for r in ranks])
            torch.testing.assert_close(got, world_size * single[key], rtol=1e-10, atol=1e-12, msg=key)
