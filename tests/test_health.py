"""Learning-health telemetry: the cosine and margin math, gradient norms (plain and in DeepSpeed engines
under ZeRO 0-3), chance losses and the plateau watchdog's diagnoses."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from tests.distributed import run_distributed
from tests.helpers import tiny_config
from trainer.health import (
    GRAD_TOTAL,
    PlateauWatchdog,
    chance_loss,
    contrasted_sets,
    embedding_health,
    grad_norms,
    logit_margin,
    mean_offdiagonal_cosine,
)
from trainer.losses import pretext_loss
from trainer.models import AVSAOutput, Embeddings

SETTINGS = settings(max_examples=25, deadline=None)


def gram_cosine(x: torch.Tensor) -> float:
    """The mean off-diagonal cosine written out with the N×N Gram matrix, in float64."""
    u = F.normalize(x.double().reshape(-1, x.shape[-1]), dim=1)
    n = len(u)
    gram = u @ u.T
    return ((gram.sum() - gram.diagonal().sum()) / (n * (n - 1))).item()


# ----- mean_offdiagonal_cosine ----------------------------------------------------------------------
@SETTINGS
@given(
    n=st.integers(2, 12),
    dim=st.integers(1, 16),
    seed=st.integers(0, 2**31 - 1),
    scales=st.lists(st.floats(1e-3, 1e3), min_size=12, max_size=12),
)
def test_identical_rows_have_cosine_one_whatever_their_lengths(
    n: int, dim: int, seed: int, scales: list[float]
) -> None:
    row = torch.randn(dim, generator=torch.Generator().manual_seed(seed)) + 0.1  # never the zero vector
    x = row * torch.tensor(scales[:n])[:, None]
    assert mean_offdiagonal_cosine(x).item() == pytest.approx(1.0, abs=1e-5)


@SETTINGS
@given(n=st.integers(2, 16), extra=st.integers(0, 8), seed=st.integers(0, 2**31 - 1))
def test_orthogonal_rows_have_cosine_zero(n: int, extra: int, seed: int) -> None:
    # n orthonormal rows (a random rotation of the basis), each scaled by its own positive factor.
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n + extra, n + extra, generator=g, dtype=torch.float64))
    x = q[:n] * (0.1 + torch.rand(n, 1, generator=g, dtype=torch.float64) * 10)
    assert mean_offdiagonal_cosine(x).item() == pytest.approx(0.0, abs=1e-9)


@SETTINGS
@given(
    n=st.integers(2, 10),
    dim=st.integers(2, 16),
    seed=st.integers(0, 2**31 - 1),
    scales=st.lists(st.floats(1e-2, 1e2), min_size=10, max_size=10),
)
def test_cosine_matches_the_gram_matrix_and_ignores_row_scale(
    n: int, dim: int, seed: int, scales: list[float]
) -> None:
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    got = mean_offdiagonal_cosine(x).item()  # an fp32 result
    assert got == pytest.approx(gram_cosine(x), abs=1e-6)
    scaled = x * torch.tensor(scales[:n], dtype=torch.float64)[:, None]
    assert mean_offdiagonal_cosine(scaled).item() == pytest.approx(got, abs=1e-6)


def test_cosine_of_random_rows_in_high_dimension_is_near_zero_and_leading_dims_are_rows() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 8, 1024, generator=g)  # [B, K, E]: 64 rows
    assert abs(mean_offdiagonal_cosine(x).item()) < 0.02
    assert mean_offdiagonal_cosine(x).item() == pytest.approx(mean_offdiagonal_cosine(x.flatten(0, 1)).item())
    assert mean_offdiagonal_cosine(x.bfloat16()).dtype == torch.float32


def test_cosine_of_fewer_than_two_rows_is_nan() -> None:
    assert math.isnan(mean_offdiagonal_cosine(torch.ones(1, 5)).item())
    assert math.isnan(mean_offdiagonal_cosine(torch.ones(0, 5)).item())


# ----- logit_margin ---------------------------------------------------------------------------------
def test_margin_is_positive_minus_hardest_negative() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0], [1.0, 4.0, 0.0]])
    labels = torch.tensor([0, 1, 0])
    # Rows: 3 − 2 = 1; 5 − 1 = 4; 1 − 4 = −3 (the hardest negative wins that row).
    assert logit_margin(logits, labels).item() == pytest.approx((1 + 4 - 3) / 3)
    assert logit_margin(logits[2:], labels[2:]).item() == pytest.approx(-3.0)
    assert logit_margin(torch.full((4, 6), 0.3), torch.arange(4)).item() == 0.0  # collapsed: all tied


def test_margin_ignores_masked_candidates_and_rows_without_a_margin() -> None:
    inf = math.inf
    logits = torch.tensor(
        [
            [1.0, -inf, 0.5],  # the masked candidate is not the hardest negative: 0.5
            [-inf, 2.0, -inf],  # no finite negative: no margin, left out
            [-inf, 0.0, 1.0],  # masked positive: left out
        ]
    )
    assert logit_margin(logits, torch.tensor([0, 1, 0])).item() == pytest.approx(0.5)
    assert math.isnan(logit_margin(logits[1:], torch.tensor([1, 0])).item())
    # [..., M] logits with [...] labels, as the AVSA logits [B, K, C] come.
    stacked = torch.tensor([[[2.0, 0.0], [0.0, 3.0]], [[1.0, 1.5], [0.0, 0.0]]])
    labels = torch.tensor([[0, 1], [0, 1]])
    assert logit_margin(stacked, labels).item() == pytest.approx((2 + 3 - 0.5 + 0) / 4)


def test_embedding_health_margin_uses_the_losses_candidates() -> None:
    g = torch.Generator().manual_seed(0)
    b, k, e, tau = 3, 2, 8, 0.1

    def unit(*shape: int) -> torch.Tensor:
        return F.normalize(torch.randn(*shape, e, generator=g, dtype=torch.float64), dim=-1)

    vp = Embeddings(unit(b, k), unit(b, k), unit(b, k), unit(b, k))
    clips = Embeddings(unit(b), unit(b), unit(b), unit(b))
    health = embedding_health(AVSAOutput(viewpoints=vp, clips=clips), "avsa", tau)
    margins = []
    for query, target in ((vp.video_pred, vp.video), (vp.audio_pred, vp.audio)):
        score = torch.einsum("bke,cje->bkcj", query, target) / tau  # query (b, k) against target (c, j)
        for c in range(b):
            for v in range(k):
                hard = [score[c, v, c, j] for j in range(k) if j != v]  # the clip's other viewpoints
                easy = [score[c, v, o, v] for o in range(b) if o != c]  # this viewpoint of other clips
                margins.append((score[c, v, c, v] - max(hard + easy)).item())
    assert health["margin"].item() == pytest.approx(sum(margins) / len(margins), rel=1e-5)
    assert set(health) >= {"cos_video", "cos_audio_pred", "cos_clip_video", "cos_clip_audio_pred"}

    # AVC on the trunks: per viewpoint, audio against video and back, the other clips' same viewpoint
    # the negatives.
    health = embedding_health(AVSAOutput(viewpoints=vp, clips=clips), "avc", tau, "trunks")
    margins = []
    for query, target in ((vp.audio, vp.video), (vp.video, vp.audio)):
        for v in range(k):
            logits = query[:, v] @ target[:, v].T / tau
            margins += [
                (logits[i, i] - logits[i].masked_fill(torch.eye(b)[i].bool(), -math.inf).max()).item()
                for i in range(b)
            ]
    assert health["margin"].item() == pytest.approx(sum(margins) / len(margins), rel=1e-5)


# ----- grad_norms -----------------------------------------------------------------------------------
class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(3, 4)
        self.second = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
        self.frozen = nn.Linear(2, 2).requires_grad_(False)
        self.unused = nn.Linear(2, 2)  # never called: no gradient
        self.scale = nn.Parameter(torch.tensor(1.5))  # the root's own parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.frozen(self.second(self.first(x))) * self.scale


def test_grad_norms_of_a_plain_module_equal_a_hand_computation() -> None:
    torch.manual_seed(0)
    model = Small()
    model(torch.randn(5, 3)).square().sum().backward()
    norms = grad_norms(model)

    def by_hand(*modules: nn.Module) -> float:
        return math.sqrt(sum(float((p.grad**2).sum()) for m in modules for p in m.parameters()))

    assert set(norms) == {"grad_first", "grad_second", GRAD_TOTAL}  # frozen and unused skipped
    assert norms["grad_first"].item() == pytest.approx(by_hand(model.first), rel=1e-6)
    assert norms["grad_second"].item() == pytest.approx(by_hand(model.second), rel=1e-6)
    total = math.sqrt(by_hand(model.first, model.second) ** 2 + float(model.scale.grad) ** 2)  # type: ignore[arg-type]
    assert norms[GRAD_TOTAL].item() == pytest.approx(total, rel=1e-6)
    assert all(v.dim() == 0 and v.dtype == torch.float32 for v in norms.values())
    assert set(grad_norms(model, prefix="")) == {"first", "second", "total"}


def _engine_grad_norms(rank: int, world_size: int, cfg: Any, zero_stages: list[int]) -> dict[int, Any]:
    """Per ZeRO stage: grad_norms of an engine after backward, the same of a plain copy of the model on
    the same batch (one rank only), the norms of deepspeed's safe_get_full_grad, and whether DeepSpeed
    left any p.grad set."""
    from deepspeed.utils import safe_get_full_grad

    from dataloading.features import FeatureSettings
    from dataloading.synth.batches import SyntheticSource
    from trainer.models import AVSAModel
    from trainer.train import make_engine, setup_distributed

    _, _, device, _ = setup_distributed()
    source = SyntheticSource(cfg.data, 1, rank=rank, world_size=world_size)
    source.set_epoch(0)
    batch = next(iter(source))
    results = {}
    for zero in zero_stages:
        cfg.train.zero_stage = zero
        torch.manual_seed(cfg.train.seed)  # make_engine's initial weights
        plain = AVSAModel(cfg.model, FeatureSettings.of(cfg.data).channels)
        engine = make_engine(cfg, device)
        norms = []
        for model, backward in ((engine, engine.backward), (plain, torch.Tensor.backward)):
            loss, _ = pretext_loss(model(batch.video, batch.audio, batch.directions), "avc", 0.07, "trunks")
            backward(loss)
            module = engine.module if model is engine else plain
            norms.append({k: v.item() for k, v in grad_norms(module).items()})
        squares = {
            name: sum(float(safe_get_full_grad(p).float().square().sum()) for p in child.parameters())  # type: ignore[union-attr]
            for name, child in engine.module.named_children()
        }
        full = {f"grad_{k}": math.sqrt(v) for k, v in squares.items()} | {
            GRAD_TOTAL: math.sqrt(sum(squares.values()))
        }
        grad_set = any(p.grad is not None for p in engine.module.parameters())
        engine.step()
        results[zero] = {"engine": norms[0], "plain": norms[1], "full": full, "grad_set": grad_set}
    return results


@pytest.mark.integration
def test_grad_norms_of_a_deepspeed_engine_under_zero_0_to_3(tmp_path: Path) -> None:
    (results,) = run_distributed(_engine_grad_norms, 1, tiny_config(tmp_path), [0, 1, 2, 3], timeout_s=300)
    for zero, r in results.items():
        engine = r["engine"]
        assert all(math.isfinite(v) for v in engine.values()), zero
        assert engine["grad_video_encoder"] > 0 and engine["grad_audio_encoder"] > 0, zero
        # Healthy gradients are orders of magnitude above the watchdog's vanishing threshold.
        assert engine[GRAD_TOTAL] > 1e-2, zero
        assert engine == pytest.approx(r["plain"], rel=1e-4), zero
        assert engine == pytest.approx(r["full"], rel=1e-4), zero
        # Why grad_norms cannot read p.grad alone: ZeRO 1-3 clear it at the end of backward.
        assert r["grad_set"] == (zero == 0), zero


@pytest.mark.integration
def test_grad_norms_sum_the_partitions_of_two_ranks(tmp_path: Path) -> None:
    ranks = run_distributed(_engine_grad_norms, 2, tiny_config(tmp_path), [1, 2], timeout_s=300)
    for zero in (1, 2):
        # Each rank holds part of the gradient; the norms are the full gradient's, the same on both.
        assert ranks[0][zero]["engine"] == pytest.approx(ranks[0][zero]["full"], rel=1e-4), zero
        assert ranks[1][zero]["engine"] == ranks[0][zero]["engine"], zero


# ----- chance -----------------------------------------------------------------------------------------
def test_chance_loss_is_ln_of_the_candidates() -> None:
    assert chance_loss("avc", 8, 4) == pytest.approx(math.log(8))
    assert chance_loss("avsa", 8, 4) == pytest.approx(math.log(4 + 8 - 1))
    with pytest.raises(ValueError, match="stage"):
        chance_loss("seld", 8, 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clips"):
        chance_loss("avc", 0, 4)


@pytest.mark.parametrize("stage", ["avc", "avsa"])
def test_collapsed_embeddings_give_exactly_the_chance_loss(stage: str) -> None:
    out = collapsed_output(clips=4, views=3)
    loss, _ = pretext_loss(out, stage, 0.07, "context")  # type: ignore[arg-type]
    assert loss.item() == pytest.approx(chance_loss(stage, 4, 3), rel=1e-6)  # type: ignore[arg-type]


# ----- the watchdog -----------------------------------------------------------------------------------
class Collapsed(nn.Module):
    """Whatever the input, every embedding is the same unit vector (its weights multiply by zero)."""

    def __init__(self, dim: int = 8, embed: int = 16) -> None:
        super().__init__()
        self.trunk = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, embed)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.copy_(torch.linspace(-1, 1, embed))

    def forward(self, x: torch.Tensor) -> AVSAOutput:  # x: [B, K, dim]
        e = F.normalize(self.head(torch.relu(self.trunk(x))), dim=-1)
        sets = Embeddings(e, e.clone(), e.clone(), e.clone())
        pooled = Embeddings(*(F.normalize(s.amax(dim=1), dim=-1) for s in (e, e, e, e)))
        return AVSAOutput(viewpoints=sets, clips=pooled)


def collapsed_output(clips: int, views: int) -> AVSAOutput:
    torch.manual_seed(0)
    return Collapsed()(torch.randn(clips, views, 8))


def spread_health(grad: float = 0.5) -> dict[str, float]:
    """Health of a model whose embeddings are spread, with a total gradient norm ``grad``."""
    g = torch.Generator().manual_seed(1)
    vp = Embeddings(*(F.normalize(torch.randn(4, 2, 64, generator=g), dim=-1) for _ in range(4)))
    clips = Embeddings(*(F.normalize(torch.randn(4, 64, generator=g), dim=-1) for _ in range(4)))
    health = {k: v.item() for k, v in embedding_health(AVSAOutput(viewpoints=vp, clips=clips)).items()}
    return health | {GRAD_TOTAL: grad, "grad_video_encoder": grad / 2}


def test_a_collapsed_model_warns_once_after_warn_steps_and_names_collapse() -> None:
    torch.manual_seed(0)
    model, tau, (clips, views) = Collapsed(), 0.07, (4, 2)
    chance = chance_loss("avc", clips, views)
    dog = PlateauWatchdog(warn_steps=50)
    messages = {}
    for step in range(10, 130, 10):  # one logged row per 10 steps
        out = model(torch.randn(clips, views, 8))
        loss, _ = pretext_loss(out, "avc", tau, "trunks")
        model.zero_grad()
        loss.backward()
        health = embedding_health(out, "avc", tau) | grad_norms(model)
        messages[step] = dog.observe(
            step, "avc", loss.item(), chance, {k: v.item() for k, v in health.items()}
        )
    warned = {step: m for step, m in messages.items() if m}
    assert list(warned) == [50]
    message = warned[50]
    assert message.startswith("the avc loss has sat at chance (1.386 = ln 4) for 50 steps")
    assert "collapsed (mean cosine 1.00 video, 1.00 audio)" in message
    # A perfectly collapsed model is a fixed point: equal targets make every embedding gradient zero.
    assert "gradients have vanished" in message
    assert "avc" not in dog.left_at


def test_collapse_with_flowing_gradients_names_only_collapse() -> None:
    dog = PlateauWatchdog(warn_steps=20)
    health = {
        "cos_video": 0.96,
        "cos_audio": 0.95,
        "cos_video_pred": 0.3,
        "cos_audio_pred": 0.2,
        GRAD_TOTAL: 2.0,
    }
    chance = chance_loss("avsa", 8, 2)
    assert dog.observe(10, "avsa", chance, chance, health) is None
    message = dog.observe(20, "avsa", chance * 1.005, chance, health)
    assert message is not None and "= ln 9" in message
    assert "collapsed (mean cosine 0.96 video, 0.95 audio, 0.30 video pred, 0.20 audio pred)" in message
    assert "vanished" not in message


def test_a_healthy_run_never_warns_and_records_when_it_left_the_plateau() -> None:
    chance = chance_loss("avc", 8, 2)  # 2.079
    dog = PlateauWatchdog(warn_steps=30)
    losses = [chance, chance - 0.01, chance - 0.04, chance - 0.06, chance - 0.3, chance - 0.02, 1.0]
    messages = [
        dog.observe(10 * (i + 1), "avc", loss, chance, spread_health()) for i, loss in enumerate(losses)
    ]
    assert messages == [None] * len(losses)
    assert dog.left_at == {"avc": 40}  # the first row more than 0.05 nats below chance; later ones keep it


def test_flat_at_chance_with_spread_embeddings_and_flowing_gradients_says_neither() -> None:
    chance = chance_loss("avsa", 8, 2)
    dog = PlateauWatchdog(warn_steps=100)
    health = spread_health(grad=0.8)
    messages = [dog.observe(step, "avsa", chance * 0.995, chance, health) for step in range(25, 225, 25)]
    assert messages[:3] == [None] * 3 and messages[4:] == [None] * 4  # warned at step 100 only
    message = messages[3]
    assert message is not None and "for 100 steps (steps 1-100)" in message
    assert "the embeddings are spread" in message and "gradients flow (total norm 0.8)" in message
    assert "the features may carry nothing that tells the candidates apart" in message
    assert "collapsed" not in message and "vanished" not in message


def test_vanishing_gradients_are_named() -> None:
    chance = chance_loss("avc", 8, 2)
    dog = PlateauWatchdog(warn_steps=10)
    message = dog.observe(10, "avc", chance, chance, spread_health(grad=3e-7))
    assert message is not None and "gradients have vanished (total norm 3.0e-07 < 1e-04)" in message
    assert "collapsed" not in message and "spread" not in message


def test_only_the_sets_the_stage_contrasts_can_be_collapsed() -> None:
    # AVC on the trunks leaves the context side untrained: its predictions' spread does not matter.
    assert contrasted_sets("avc", "trunks") == ("cos_video", "cos_audio")
    health = spread_health() | {"cos_clip_video_pred": 0.99, "cos_video_pred": 0.99}
    chance = chance_loss("avc", 8, 2)
    message = PlateauWatchdog(warn_steps=10).observe(10, "avc", chance, chance, health)
    assert message is not None and "spread" in message and "pred" not in message
    message = PlateauWatchdog(warn_steps=10, avc_form="context").observe(10, "avc", chance, chance, health)
    assert message is not None and "collapsed" in message and "0.99 clip video pred" in message


def test_leaving_the_band_resets_the_count_and_a_new_stage_warns_again() -> None:
    avc, avsa = chance_loss("avc", 8, 2), chance_loss("avsa", 8, 2)
    dog = PlateauWatchdog(warn_steps=30)
    health = spread_health()
    # 20 steps at chance, one window 2 % above it (out of the band, not below chance), then at chance.
    rows = [(10, avc), (20, avc), (30, avc * 1.02), (40, avc), (50, avc)]
    assert [dog.observe(s, "avc", loss, avc, health) for s, loss in rows] == [None] * 5
    assert "for 30 steps (steps 31-60)" in (dog.observe(60, "avc", avc, avc, health) or "")
    assert dog.observe(70, "avc", avc, avc, health) is None  # once per stage
    # The AVSA stage starts: its own count from its first step, and its own warning.
    assert dog.observe(80, "avsa", avsa, avsa, health) is None
    assert dog.observe(90, "avsa", avsa, avsa, health) is None
    assert "avsa loss has sat at chance (2.197 = ln 9) for 30 steps (steps 71-100)" in (
        dog.observe(100, "avsa", avsa, avsa, health) or ""
    )
    assert dog.left_at == {}


def test_missing_health_says_the_cause_is_unknown() -> None:
    chance = chance_loss("avc", 8, 2)
    message = PlateauWatchdog(warn_steps=10).observe(10, "avc", chance, chance, {"cos_video": math.nan})
    assert message is not None and "cause is unknown" in message


def test_a_resumed_watchdog_goes_on_where_it_was() -> None:
    chance = chance_loss("avc", 8, 2)
    health = spread_health()
    rows = [(10, chance - 0.1), (20, chance), (30, chance), (40, chance), (50, chance), (60, chance)]
    straight = PlateauWatchdog(warn_steps=30)
    expected = [straight.observe(step, "avc", loss, chance, health) for step, loss in rows]

    first = PlateauWatchdog(warn_steps=30)
    got = [first.observe(step, "avc", loss, chance, health) for step, loss in rows[:2]]
    state = json.loads(json.dumps(first.state_dict()))  # JSON types only
    resumed = PlateauWatchdog(warn_steps=30)
    resumed.load_state_dict(state)
    got += [resumed.observe(step, "avc", loss, chance, health) for step, loss in rows[2:]]
    assert got == expected and expected[3] is not None  # the warning at step 40, once
    assert resumed.state_dict() == straight.state_dict()
    assert resumed.left_at == {"avc": 10}
