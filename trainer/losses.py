"""AVC and AVSA contrastive losses over the global batch, their accuracies, and the curriculum.

All logits are cosine similarities of unit vectors divided by the temperature τ (0.07).

Global batch: the candidate *targets* are gathered from every rank with an autograd-aware gather,
so each rank's queries see the whole batch as negatives. Each rank returns the mean loss over its
own queries; with equal local batches the mean of the ranks' losses is the loss of one process over
the concatenated batch. Gradients: the gather's backward sums, over ranks, the gradients flowing into
each rank's slice, so a rank's local gradient is world_size × the single-process gradient of its
slice. The data-parallel all-reduce that averages gradients over ranks (DDP, DeepSpeed) divides by
world_size again, so parameter updates equal those of one process on the global batch.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F

from trainer.config import AvcForm
from trainer.models import AVSAOutput, Embeddings

Stage = Literal["avc", "avsa"]


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward all-reduces (sums) the gradient and keeps this rank's slice.

    An all-reduce rather than a reduce-scatter because gloo has no reduce-scatter; the tensors are
    a few hundred embeddings, so the extra traffic is negligible.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()  # all_reduce works in place; autograd may reuse `grad`
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Similarities in at least fp32: bf16 has ~3 significant digits, too coarse for logits up to 1/τ ≈ 14."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``[n, ...]`` on each rank → (``[world_size·n, ...]`` in rank order, offset of this rank's rows).

    Every rank must pass the same shape. Without an initialised process group this returns ``(x, 0)``.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    return _GatherWithGrad.apply(x), dist.get_rank() * x.shape[0]


def info_nce(query: torch.Tensor, target: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE of local queries ``[n, E]`` against the global batch of targets ``[n, E]`` per rank.

    Query i's positive is target i; every other target of the global batch is a negative.
    Returns (mean loss over local queries, top-1 accuracy over local queries).
    """
    targets, offset = gather_with_grad(target)
    query, targets = _at_least_fp32(query), _at_least_fp32(targets)
    logits = query @ targets.T / tau  # [n, world_size·n]
    labels = torch.arange(offset, offset + query.shape[0], device=query.device)
    loss = F.cross_entropy(logits, labels)
    with torch.no_grad():
        positive = logits.gather(1, labels[:, None])
        # Strictly above every negative: a collapsed model (all logits equal) scores 0, not 1.
        acc = ((logits >= positive).sum(dim=1) == 1).float().mean()
    return loss, acc


def avsa_loss(
    query: torch.Tensor, target: torch.Tensor, tau: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Spatial-alignment loss of local queries ``[B, K, E]`` against targets ``[B, K, E]``.

    For query (clip b, viewpoint k) the candidates are: the positive target (b, k); the hard
    negatives (b, j≠k), the clip's other viewpoints; the easy negatives (c≠b, k), the same viewpoint
    of every other clip of the global batch. Targets at other viewpoints of other clips are not
    candidates. Returns (mean cross-entropy over the local B·K queries, AVC-acc = share of queries whose
    positive beats every easy negative, AVSA-acc = share whose positive beats every hard negative).
    """
    b, k = query.shape[:2]
    targets, offset = gather_with_grad(target)  # [world_size·B, K, E]
    query, target, targets = _at_least_fp32(query), _at_least_fp32(target), _at_least_fp32(targets)
    # The clip's own targets are local, so they are read from `target` directly.
    hard = torch.einsum("bke,bje->bkj", query, target) / tau  # [B, K, K]; diagonal = positives
    easy = torch.einsum("bke,cke->bkc", query, targets) / tau  # [B, K, world_size·B]
    own_clip = torch.arange(targets.shape[0], device=query.device) == (
        offset + torch.arange(b, device=query.device)[:, None]
    )  # [B, world_size·B]
    easy = easy.masked_fill(own_clip[:, None, :], float("-inf"))  # the positive is already in `hard`
    logits = torch.cat([hard, easy], dim=2)  # [B, K, K + world_size·B]
    labels = torch.arange(k, device=query.device).expand(b, k)
    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
    with torch.no_grad():
        positive = hard.diagonal(dim1=1, dim2=2)  # [B, K]
        others = hard.masked_fill(torch.eye(k, dtype=torch.bool, device=query.device), float("-inf"))
        avc_acc = (positive > easy.amax(dim=2)).float().mean()
        avsa_acc = (positive > others.amax(dim=2)).float().mean()
    return loss, avc_acc, avsa_acc


def avc_pairs(out: AVSAOutput, form: AvcForm) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (queries, targets) pairs the AVC stage contrasts, both directions, each ``[B, V, E]``: V
    problems of B candidates (query (b, v)'s positive is target (b, v), its negatives (c≠b, v)).

    ``trunks``: audio against video and video against audio per viewpoint (V = K), each modality's own
    embeddings, like the reference's ``CrossInstDisc`` on one crop per clip. ``context``: each context
    prediction of the clip embeddings (max-pooled over viewpoints) against its modality's targets (V = 1).
    """
    if form == "trunks":
        e = out.viewpoints
        return [(e.audio, e.video), (e.video, e.audio)]
    if form == "context":
        c = out.clips
        return [(c.video_pred[:, None], c.video[:, None]), (c.audio_pred[:, None], c.audio[:, None])]
    raise ValueError(f"unknown AVC form {form!r}; expected 'trunks' or 'context'")


def avsa_pairs(embeddings: Embeddings) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (queries, targets) pairs the AVSA stage contrasts: each context prediction against its
    modality's targets (audio→video and video→audio), each ``[B, K, E]``."""
    return [(embeddings.video_pred, embeddings.video), (embeddings.audio_pred, embeddings.audio)]


def avc_loss(query: torch.Tensor, target: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`info_nce` of each of the V problems of ``[B, V, E]`` queries and targets → (mean loss,
    mean top-1 accuracy) over the V problems."""
    terms = [info_nce(query[:, v], target[:, v], tau) for v in range(query.shape[1])]
    return sum(t[0] for t in terms) / len(terms), sum(t[1] for t in terms) / len(terms)


def pretext_loss(
    out: AVSAOutput, stage: Stage, tau: float, avc_form: AvcForm
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The curriculum stage's loss, averaged over both directions of its pairs.

    ``avc``: :func:`avc_loss` of :func:`avc_pairs`; ``avsa``: :func:`avsa_loss` per viewpoint of
    :func:`avsa_pairs`. Metrics (detached): ``loss``, ``avc_acc`` (from the stage's own logits) and
    ``avsa_acc``, the spatial alignment of the stage's pairs per viewpoint (during AVC on the trunks it
    shows how much spatial alignment correspondence alone learns). Every rank must call this with the
    same stage (collectives).
    """
    if stage == "avc":
        pairs = avc_pairs(out, avc_form)
        terms = [avc_loss(q, t, tau) for q, t in pairs]
        loss = sum(term[0] for term in terms) / 2
        avc_acc = sum(term[1] for term in terms) / 2
        if avc_form == "trunks":
            # The context side sits this stage out, but a data-parallel engine needs every parameter
            # in every step's graph: a zero-weighted term gives them zero gradients.
            loss = loss + 0.0 * sum(e.sum() for e in (out.clips.video_pred, out.clips.audio_pred))
        with torch.no_grad():
            spatial = pairs if avc_form == "trunks" else avsa_pairs(out.viewpoints)
            avsa_acc = sum(avsa_loss(q, t, tau)[2] for q, t in spatial) / 2
    elif stage == "avsa":
        terms = [avsa_loss(q, t, tau) for q, t in avsa_pairs(out.viewpoints)]
        loss = sum(term[0] for term in terms) / 2
        avc_acc = sum(term[1] for term in terms) / 2
        avsa_acc = sum(term[2] for term in terms) / 2
    else:
        raise ValueError(f"unknown stage {stage!r}; expected 'avc' or 'avsa'")
    return loss, {"loss": loss.detach(), "avc_acc": avc_acc, "avsa_acc": avsa_acc}


def stage_for_epoch(epoch: int, avc_epochs: int) -> Stage:
    """The curriculum: epochs ``0 .. avc_epochs-1`` train AVC, later ones AVSA (0 = AVSA from scratch)."""
    return "avc" if epoch < avc_epochs else "avsa"
