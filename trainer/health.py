"""Learning-health telemetry for the contrastive trainer: is the model learning, and if not, why.

A contrastive loss that sits at *chance*, ln(number of candidates), for hundreds of steps has three
usual causes, and each leaves a different trace:

- **collapse**: every input maps to (nearly) the same embedding, so every logit is equal. Measured by
  :func:`mean_offdiagonal_cosine` of each embedding set (1 = collapsed, ~0 = spread).
- **vanishing gradients**: the trunks stop receiving signal. Measured by :func:`grad_norms`, per
  top-level child module and in total.
- **neither**: spread embeddings and flowing gradients, but nothing in the inputs tells the positive
  from the negatives (broken pairing, misaligned audio, a bug in the viewpoints).

:class:`PlateauWatchdog` watches the logged loss against :func:`chance_loss` and, once the loss has sat
at chance long enough, says which of the three it is; it also records when each stage's loss first
left its plateau. Everything here returns tensors on the device (nothing is read to the host) except
the watchdog, which takes the host-side floats of a logged row.

Wiring into the loop (:mod:`trainer.train`) takes a few lines::

    out = engine(video, audio, directions)
    loss, metrics = pretext_loss(out, stage, tau, avc_form)
    metrics |= embedding_health(out, stage, tau, avc_form)  # cos_*, margin: O(B·K·E), no collective
    engine.backward(loss)
    metrics |= grad_norms(engine.module)                    # grad_*: between backward and step
    engine.step()
    ...
    watchdog = PlateauWatchdog(warn_steps, avc_form=avc_form)   # its state_dict() goes in checkpoints
    chance = chance_loss(stage, cfg.data.batch_size * world_size, cfg.data.viewpoints)
    message = watchdog.observe(done, stage, row["loss"], chance, row)
    if message and rank == 0: log.warning(message)

Adding both dicts every step keeps :class:`trainer.window.MetricWindow`'s means right (it divides each
sum by the window's step count); :func:`grad_norms` costs one pass over the gradients plus, under ZeRO,
one all-reduce of (children + 1) floats.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from trainer.config import AvcForm
from trainer.losses import Stage, avc_pairs, avsa_pairs
from trainer.models import AVSAOutput, Embeddings

COSINE_PREFIX = "cos_"
"""Health keys that hold a mean off-diagonal cosine start with this (the watchdog's collapse test)."""
GRAD_PREFIX = "grad_"
""":func:`grad_norms` prefixes its keys with this by default."""
GRAD_TOTAL = GRAD_PREFIX + "total"
"""The health key of the total gradient norm (the watchdog's vanishing-gradient test)."""
MARGIN = "margin"
"""The health key of the mean logit margin (positive − hardest negative) of the stage."""


# ----- embeddings -----------------------------------------------------------------------------------
def mean_offdiagonal_cosine(x: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over all ordered pairs of distinct rows of ``x`` (``[..., E]``, flattened
    to rows), as a 0-d fp32 tensor on ``x``'s device (not read to the host).

    1 when every row points the same way (collapse), about 0 for random rows in high dimension, and at
    least −1/(N−1) (N rows that cancel out). Rows of norm 0 count as cosine 0 with every other row.
    Fewer than 2 rows have no pair: the result is NaN, which marks "not measured" (the watchdog ignores
    NaN) rather than pretending to a value.
    """
    rows = x.detach().reshape(-1, x.shape[-1])
    n = rows.shape[0]
    if n < 2:
        return torch.full((), math.nan, device=x.device)
    # fp32 at least: bf16 keeps ~3 digits, and the formula below subtracts two sums of size ~N².
    unit = F.normalize(rows.float() if rows.dtype in (torch.float16, torch.bfloat16) else rows, dim=1)
    # Σ_{i≠j} u_i·u_j = |Σ_i u_i|² − Σ_i |u_i|²: O(N·E) instead of building the N×N Gram matrix.
    total = unit.sum(dim=0).square().sum()
    diagonal = unit.square().sum()
    return ((total - diagonal) / (n * (n - 1))).float()


def logit_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over rows of (positive logit − hardest negative logit), a 0-d fp32 tensor.

    ``logits`` is ``[..., M]`` (each row's M candidates) and ``labels`` ``[...]`` the positive's index
    in each row. ``-inf`` entries are masked candidates and never count as the hardest negative. A
    negative margin means the hardest negative beats the positive (the row is a top-1 miss). Rows left
    without a finite positive or without any finite negative have no margin and are left out of the
    mean; if no row is left the result is NaN.
    """
    logits = logits.detach().reshape(-1, logits.shape[-1]).float()
    labels = labels.reshape(-1, 1).to(logits.device)
    positive = logits.gather(1, labels).squeeze(1)
    hardest = logits.scatter(1, labels, -math.inf).amax(dim=1)
    margin = positive - hardest
    valid = positive.isfinite() & hardest.isfinite()
    # where() instead of boolean indexing: no data-dependent shape, so no device→host sync.
    count = valid.sum()
    mean = torch.where(valid, margin, 0.0).sum() / count
    return torch.where(count > 0, mean, math.nan)


_SETS = tuple(f.name for f in dataclasses.fields(Embeddings))  # video, audio, video_pred, audio_pred


def contrasted_sets(stage: Stage, avc_form: AvcForm = "trunks") -> tuple[str, ...]:
    """The health keys (``cos_*``) of the embedding sets the stage's loss contrasts (see
    :func:`trainer.losses.avc_pairs` and :func:`trainer.losses.avsa_pairs`).

    ``avsa``: the per-viewpoint predictions and targets; ``avc`` on the trunks: the per-viewpoint targets
    only (the predictions sit that stage out, and whatever their spread, it cannot hold the AVC loss at
    chance); ``avc`` on the context: the clip-level sets.
    """
    if stage == "avsa":
        return tuple(f"{COSINE_PREFIX}{name}" for name in _SETS)
    if stage == "avc":
        if avc_form == "trunks":
            return (f"{COSINE_PREFIX}video", f"{COSINE_PREFIX}audio")
        return tuple(f"{COSINE_PREFIX}clip_{name}" for name in _SETS)
    raise ValueError(f"unknown stage {stage!r}; expected 'avc' or 'avsa'")


def _local_margin(out: AVSAOutput, stage: Stage, tau: float, avc_form: AvcForm) -> torch.Tensor:
    """The stage's logit margin, averaged over both directions, against this rank's candidates only."""
    margins = []
    if stage == "avc":
        for query, target in avc_pairs(out, avc_form):  # [B, V, E]: V problems of B candidates
            logits = torch.einsum("bve,cve->vbc", query.float(), target.float()) / tau  # positives: b = c
            labels = torch.arange(query.shape[0], device=query.device).expand(query.shape[1], -1)
            margins.append(logit_margin(logits, labels))
    elif stage == "avsa":
        for query, target in avsa_pairs(out.viewpoints):
            query, target = query.float(), target.float()
            b, k = query.shape[:2]
            # The candidate sets of trainer.losses.avsa_loss, on the local batch.
            hard = torch.einsum("bke,bje->bkj", query, target) / tau  # [B, K, K]; positives on the diagonal
            easy = torch.einsum("bke,cke->bkc", query, target) / tau  # [B, K, B]
            own_clip = torch.eye(b, dtype=torch.bool, device=query.device)
            easy = easy.masked_fill(own_clip[:, None, :], -math.inf)  # the positive is already in `hard`
            labels = torch.arange(k, device=query.device).expand(b, k)
            margins.append(logit_margin(torch.cat([hard, easy], dim=2), labels))
    else:
        raise ValueError(f"unknown stage {stage!r}; expected 'avc' or 'avsa'")
    return torch.stack(margins).mean()


@torch.no_grad()
def embedding_health(
    out: AVSAOutput, stage: Stage | None = None, tau: float = 0.07, avc_form: AvcForm = "trunks"
) -> dict[str, torch.Tensor]:
    """The embedding-side health metrics of one forward pass, as 0-d tensors on the device.

    ``cos_video``, ``cos_audio``, ``cos_video_pred``, ``cos_audio_pred``: :func:`mean_offdiagonal_cosine`
    of each per-viewpoint set ``[B, K, E]`` flattened to B·K rows (what the AVSA stage contrasts). Two
    viewpoints of one clip may legitimately be alike, so a healthy model sits somewhat above 0; a
    collapsed one approaches 1. ``cos_clip_video`` …: the same for the clip-level sets ``[B, E]`` (what
    the AVC stage contrasts; NaN with a local batch of one clip).

    With ``stage`` (and the loss's ``tau`` and ``avc_form``), also ``margin``: :func:`logit_margin` of the
    stage's logits, mean over both directions. It uses this rank's candidates only (no gather, so no
    collective): on one rank these are exactly the loss's logits; on N ranks the hardest negative is
    sought among the local 1/N of the other clips, so the margin is at least the global one.

    Every value is this rank's; :class:`trainer.window.MetricWindow` then averages them over ranks. The
    cost is O(B·K·E) (no B·K × B·K matrix), small next to the loss.
    """
    health = {}
    for level, embeddings in (("", out.viewpoints), ("clip_", out.clips)):
        for name in _SETS:
            health[f"{COSINE_PREFIX}{level}{name}"] = mean_offdiagonal_cosine(getattr(embeddings, name))
    if stage is not None:
        health[MARGIN] = _local_margin(out, stage, tau, avc_form)
    return health


# ----- gradients ------------------------------------------------------------------------------------
def _is_partitioned(p: nn.Parameter) -> bool:
    """Whether DeepSpeed keeps ``p``'s gradient split across data-parallel ranks.

    ZeRO 3 marks its parameters with ``ds_id``; ZeRO 1/2 (and DeepSpeed's BF16_Optimizer) give every
    parameter they manage a ``_hp_mapping`` attribute (None where this rank owns none of it). Both are
    set on every rank alike, so every rank takes the same path and joins the same all-reduce.
    """
    return hasattr(p, "ds_id") or hasattr(p, "_hp_mapping")


def _local_grad(p: nn.Parameter) -> torch.Tensor | None:
    """This rank's share of ``p``'s gradient: the whole (already averaged) gradient when it is not
    partitioned, else the slice this rank owns, whose squares summed over ranks give the full norm.

    Why not ``deepspeed.utils.safe_get_full_grad``: under ZeRO 1/2 it all-reduces a full-size fp32 copy
    of every parameter's gradient, i.e. one collective per parameter tensor and the traffic of a whole
    extra gradient all-reduce. The slices here are exactly the ones it sums (same attributes, same
    narrowing), so the result is the same at the cost of one small all-reduce in :func:`grad_norms`.
    """
    if hasattr(p, "ds_id"):  # ZeRO 3: the public accessor of the local partition (no collective)
        from deepspeed.utils import safe_get_local_grad

        return safe_get_local_grad(p)
    if hasattr(p, "_hp_mapping"):  # ZeRO 1/2: p.grad is None after backward; the slice is in the optimizer
        mapping = p._hp_mapping
        if mapping is None:  # no element of p lies in this rank's partition
            return None
        # Raises "Gradients are only available immediately after backward and before engine step".
        piece = mapping.get_lp_grad_fragment(p._index_in_param_group).flatten()
        address = mapping.lp_fragment_address
        if piece.numel() == p.numel() != address.numel:
            # BF16_Optimizer keeps a full-size buffer on every rank; only the owned slice counts, as
            # in deepspeed.utils.tensor_fragment.get_full_hp_grad.
            piece = piece.narrow(0, address.start, address.numel)
        return piece
    return p.grad


def _dp_group(params: Iterator[nn.Parameter]) -> Any:
    """The data-parallel process group DeepSpeed partitions over (None: the default group)."""
    for p in params:
        if hasattr(p, "ds_id"):
            return p._z3_optimizer.dp_process_group
        if hasattr(p, "_hp_mapping"):
            return getattr(p, "_dp_group", None)
    return None


def _square_sum(grads: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Σ of squared entries of ``grads`` in fp32, accumulated without an fp32 copy of bf16 gradients."""
    if not grads:
        return torch.zeros((), device=device)
    return torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads]).square().sum()


@torch.no_grad()
def grad_norms(module: nn.Module, prefix: str = GRAD_PREFIX) -> dict[str, torch.Tensor]:
    """L2 norm of the gradient of each top-level child of ``module`` and of all of it, as 0-d fp32
    tensors on the gradients' device: keys ``{prefix}{child name}`` and ``{prefix}total``.

    ``module`` is the model itself: ``engine.module`` for a DeepSpeed engine. Call it after
    ``engine.backward(loss)`` and before ``engine.step()``: the gradients are then averaged over ranks
    and not yet clipped (nor, with fp16 loss scaling, unscaled; this trainer uses fp32 or bf16, scale 1).

    - ZeRO 0 and plain modules: ``p.grad`` (after DeepSpeed's all-reduce, the same on every rank).
    - ZeRO 1 and 2: DeepSpeed sets every ``p.grad`` to None at the end of backward and keeps each rank's
      slice of the averaged gradient in the optimizer; each rank sums the squares of its slices.
    - ZeRO 3: each rank's partition, through ``deepspeed.utils.safe_get_local_grad``.

    In the partitioned cases the per-child sums of squares travel in **one** all-reduce, so every rank
    must call this at the same step; the result is then the same on every rank. A child with no
    trainable parameter (or, unpartitioned, no gradient) is left out; parameters that belong to
    ``module`` itself count in the total only.
    """
    params = list(module.parameters())
    device = params[0].device if params else torch.device("cpu")
    partitioned = any(_is_partitioned(p) for p in params)

    def squares(parameters: Iterator[nn.Parameter]) -> tuple[torch.Tensor, bool]:
        """(Σ squares of this rank's share, whether the set counts as having gradients on every rank)."""
        trainable = [p for p in parameters if p.requires_grad]
        grads = [g for g in map(_local_grad, trainable) if g is not None]
        # Partitioned: a rank may own none of a child's gradient, yet must put it in the all-reduce.
        has = bool(trainable) if partitioned else bool(grads)
        return _square_sum(grads, device), has

    names, sums = [], []
    for name, child in module.named_children():
        total, has = squares(child.parameters())
        if has:
            names.append(name)
            sums.append(total)
    own, _ = squares(module.parameters(recurse=False))
    stacked = torch.stack([*sums, own]) if sums else own[None]
    if partitioned and dist.is_available() and dist.is_initialized():
        group = _dp_group(iter(params))
        if dist.get_world_size(group) > 1:
            dist.all_reduce(stacked, group=group)  # disjoint slices: their squares add up
    norms = {f"{prefix}{name}": stacked[i].sqrt() for i, name in enumerate(names)}
    norms[f"{prefix}total"] = stacked.sum().sqrt()
    return norms


# ----- the plateau ----------------------------------------------------------------------------------
def chance_loss(stage: Stage, batch_size_global: int, viewpoints: int) -> float:
    """The stage's loss when every logit is equal: ln(number of candidates per query).

    ``avc``: clip-level InfoNCE against every clip of the global batch, ln(B·world).
    ``avsa``: :func:`trainer.losses.avsa_loss`'s candidates are the clip's K viewpoints (the positive
    and K−1 hard negatives) and the same viewpoint of each other clip of the global batch (B·world − 1
    easy negatives): ln(K + B·world − 1).
    """
    if batch_size_global < 1 or viewpoints < 1:
        raise ValueError(f"need clips and viewpoints; got {batch_size_global} clips, {viewpoints} viewpoints")
    if stage == "avc":
        return math.log(batch_size_global)
    if stage == "avsa":
        return math.log(viewpoints + batch_size_global - 1)
    raise ValueError(f"unknown stage {stage!r}; expected 'avc' or 'avsa'")


def _chance_text(chance: float) -> str:
    """``2.079 = ln 8`` when e^chance is a whole number of candidates, else ``2.079``."""
    candidates = math.exp(chance)
    if abs(candidates - round(candidates)) < 1e-6 * candidates:
        return f"{chance:.3f} = ln {round(candidates)}"
    return f"{chance:.3f}"


def _finite(value: Any) -> float | None:
    """A health value as a float, or None when it is missing or NaN (not measured)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class PlateauWatchdog:
    """Watches each logged loss against chance; warns once per stage about a long plateau, with a
    diagnosis, and records the step at which each stage's loss first left its plateau.

    ``warn_steps``: how many steps the loss must sit within ``tolerance`` (relative) of chance before the
    warning. ``avc_form``: the run's ``train.avc_form``, which says which embedding sets the AVC stage
    contrasts (:func:`contrasted_sets`). ``collapse_cosine``: a mean off-diagonal cosine above it, in any
    set the stage contrasts, is collapse. ``vanishing_grad``: a ``grad_total`` below it is a vanishing
    gradient. ``left_by``: the loss has left its plateau once it is this many nats below chance.

    Why 0.9 for ``collapse_cosine``: at 0.9 the embeddings of unrelated inputs are within ~26° of each
    other, and with τ = 0.07 the logits of all candidates then differ by at most ~(1 − 0.9)/τ ≈ 1.4 on
    average, so the softmax barely prefers any; random directions in 128 dimensions sit near 0 (a plain
    Linear head at initialisation gives 0.90–0.97, see :mod:`trainer.models.heads`).

    Why 1e-4 for ``vanishing_grad``: Adam divides each gradient by its running RMS, so a gradient that
    is merely small still moves the weights at the learning rate; it stops doing so only when the
    per-element gradient nears Adam's eps (1e-8). A total norm of 1e-4 spread over the ~10⁵ parameters
    of the tiny preset (~3·10⁷ in the paper's) is ~3·10⁻⁷ (~2·10⁻⁸) per element, at that floor, and
    orders of magnitude below the norms this model has while it learns (tests/test_health.py checks a
    real engine's). A gradient that low no longer carries signal.

    Why 0.05 nats for ``left_by``: the windowed loss of a model at chance wanders by a few hundredths
    around ln N; 0.05 nats below it (the positive's probability up by 5 %) is a real departure.
    """

    def __init__(
        self,
        warn_steps: int,
        tolerance: float = 0.01,
        *,
        avc_form: AvcForm = "trunks",
        collapse_cosine: float = 0.9,
        vanishing_grad: float = 1e-4,
        left_by: float = 0.05,
    ) -> None:
        if warn_steps < 1:
            raise ValueError(f"warn_steps must be at least 1; got {warn_steps}")
        self.warn_steps, self.tolerance, self.avc_form = warn_steps, tolerance, avc_form
        self.collapse_cosine, self.vanishing_grad, self.left_by = collapse_cosine, vanishing_grad, left_by
        self.left_at: dict[str, int] = {}
        """Per stage, the first logged step whose loss was below chance − ``left_by``."""
        self.warned: set[str] = set()  # stages already warned about: one warning per stage
        self.stage: str | None = None  # the stage of the last observation
        self.last_step = 0  # the step of the last observation, after which the next window began
        self.plateau_since: int | None = None  # the step after which the loss has sat at chance

    def observe(
        self, step: int, stage: Stage, loss: float, chance: float, health: Mapping[str, Any]
    ) -> str | None:
        """One logged row: ``step`` (the window's last step), ``stage``, the window's mean ``loss``, the
        stage's ``chance`` (:func:`chance_loss`) and the health values (``cos_*``, ``grad_total``;
        other keys are ignored, and missing or NaN ones are not used). Returns a warning in plain words
        the first time in this stage that the loss has sat at chance for ``warn_steps`` steps, else None.

        A window's mean stands for all of its steps, so a plateau counts from the step after the last
        window before it; a loss outside the band ends it, and a new stage starts afresh.
        """
        if stage != self.stage:
            self.stage, self.plateau_since = stage, None
        if loss < chance - self.left_by and stage not in self.left_at:
            self.left_at[stage] = step
        at_chance = abs(loss - chance) <= self.tolerance * chance
        if not at_chance:
            self.plateau_since = None
        elif self.plateau_since is None:
            self.plateau_since = self.last_step
        self.last_step = step
        if self.plateau_since is None or stage in self.warned:
            return None
        steps = step - self.plateau_since
        if steps < self.warn_steps:
            return None
        self.warned.add(stage)
        return (
            f"the {stage} loss has sat at chance ({_chance_text(chance)}) for {steps} steps "
            f"(steps {self.plateau_since + 1}-{step}): {self.diagnose(stage, health)}"
        )

    def diagnose(self, stage: Stage, health: Mapping[str, Any]) -> str:
        """Why the stage's loss may sit at chance, from the health values: collapsed embeddings (among
        the sets the stage contrasts; all ``cos_*`` values if none of those was measured), vanishing
        gradients, both, or neither."""
        measured = {
            key: value
            for key in health
            if key.startswith(COSINE_PREFIX) and (value := _finite(health[key])) is not None
        }
        wanted = [key for key in contrasted_sets(stage, self.avc_form) if key in measured]
        cosines = {key: measured[key] for key in wanted or sorted(measured)}
        names = {key: key.removeprefix(COSINE_PREFIX).replace("_", " ") for key in cosines}
        listed = ", ".join(f"{value:.2f} {names[key]}" for key, value in cosines.items())
        collapsed = any(value > self.collapse_cosine for value in cosines.values())
        grad = _finite(health.get(GRAD_TOTAL))
        vanished = grad is not None and grad < self.vanishing_grad
        causes = []
        if collapsed:
            causes.append(
                f"embeddings are collapsed (mean cosine {listed}): the inputs map to nearly one vector, "
                "so every candidate scores alike"
            )
        if vanished:
            causes.append(
                f"gradients have vanished (total norm {grad:.1e} < {self.vanishing_grad:.0e}): "
                "the weights no longer receive a signal to move"
            )
        if causes:
            return "; and ".join(causes)
        if not cosines and grad is None:
            return "no embedding or gradient health was measured, so the cause is unknown"
        spread = f"the embeddings are spread (mean cosine {listed})" if cosines else "spread unmeasured"
        flow = f"gradients flow (total norm {grad:.2g})" if grad is not None else "gradient norm unmeasured"
        return f"{spread} and {flow}: the features may carry nothing that tells the candidates apart"

    def state_dict(self) -> dict[str, Any]:
        """The watchdog's state in JSON types, for the checkpoint of a run that will be resumed."""
        return {
            "left_at": dict(self.left_at),
            "warned": sorted(self.warned),
            "stage": self.stage,
            "last_step": self.last_step,
            "plateau_since": self.plateau_since,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (the thresholds come from the constructor, not the state)."""
        self.left_at = {str(k): int(v) for k, v in state["left_at"].items()}
        self.warned = set(state["warned"])
        self.stage = state["stage"]
        self.last_step = int(state["last_step"])
        since = state["plateau_since"]
        self.plateau_since = None if since is None else int(since)
