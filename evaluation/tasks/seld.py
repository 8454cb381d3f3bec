"""Sound event localisation and detection (SELD) on a STARSS23-format tree, scored as DCASE 2023 does.

The frozen audio encoder embeds a window of ``data.audio_seconds`` centred on every 100-ms label frame
(hop 100 ms); a small head trained on ``dev-train`` maps each frame's embedding to multi-ACCDOA
(:mod:`evaluation.accdoa`: 3 tracks × xyz × 13 classes, active where a vector's norm exceeds 0.5),
trained with the ADPIT loss; ``dev-test`` is scored with ER20°, F20°, LE_CD, LR_CD and the SELD score
in 1-s segments, macro-averaged over classes (:mod:`evaluation.seld_metrics`). Each interval is a
bootstrap over the test recordings (the counts of resampled recordings are summed, then scored).

Methods, all trained for ``suite.seld_epochs`` passes over the same dev-train frames:
- ``model``, ``random_init``, ``input_oracle``: the same head on the checkpoint's embeddings, on the
  run's architecture at its initial weights, and on the pooled input features;
- ``crnn``: a from-scratch CRNN on log-mel + intensity-vector features (the shape of the DCASE
  baseline, :class:`evaluation.crnn.CRNN`);
- ``intensity``: the classical single-source estimator, no learning: the broadband intensity vector of
  each frame, active where the frame's energy is within a threshold of the recording's loudest (the
  threshold that scores best on dev-train), labelled with dev-train's most frequent class.

Predictions go out as DCASE submission CSVs (``frame,class,track,azimuth,elevation`` at 100 ms) per
method and recording, so the official tools can score them too.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from torch import Tensor, nn

from dataloading.dcase import CLASSES, FRAME_SECONDS, Event, format_labels
from dataloading.features import FeatureExtractor, intensity_doa
from evaluation import accdoa, seld_metrics
from evaluation.bootstrap import interval, resample_weights
from evaluation.crnn import CRNN, FrameHead
from evaluation.datasets import SeldRecording, read_seld_split
from evaluation.encoders import Embedder
from evaluation.probe import LR, WEIGHT_DECAY
from evaluation.tasks import REFERENCE, Context, TaskResult

NAME = "seld"
METRICS = ("seld_score", "er20", "f20", "le_cd_deg", "lr_cd")
CHANCE = {"er20": 1.0, "f20": 0.0, "le_cd_deg": 180.0, "lr_cd": 0.0, "seld_score": 1.0}  # predicting nothing
HEAD_BATCH = 256  # frames per step of the frame heads
SEQUENCE_FRAMES = 50  # label frames (5 s) per CRNN training sequence, as the baseline's
SEQUENCE_BATCH = 8
THRESHOLDS_DB = tuple(range(-60, 1, 5))  # candidate activity thresholds of the intensity baseline


def stft_frames_per_label(extractor: FeatureExtractor) -> int:
    """STFT frames per 100-ms label frame; the features' hop must divide it (24 kHz, hop 240: 10)."""
    per_label = extractor.sample_rate * FRAME_SECONDS / extractor.hop
    if abs(per_label - round(per_label)) > 1e-9:
        raise ValueError(
            f"hop {extractor.hop} samples at {extractor.sample_rate} Hz does not divide the 100-ms SELD "
            "frame; use a hop that does (e.g. 240 at 24 kHz)"
        )
    return round(per_label)


def frame_windows(extractor: FeatureExtractor, recording: SeldRecording, seconds: float) -> Tensor:
    """Normalised features ``[frames, C, F, W]`` of a ``seconds`` window centred on each label frame.

    The recording's features are computed once and cut into windows (hop: one label frame); the
    recording's edges are padded with the features' mean (0 after normalisation). Up to the STFT's own
    edge padding, each window equals the features of that window's audio alone.
    """
    step = stft_frames_per_label(extractor)
    width = extractor.frames(round(seconds * extractor.sample_rate))
    features = extractor(recording.foa.double()).float()  # [C, F, T]
    half = width // 2
    first = step // 2  # the label frame's centre, in STFT frames from its start
    needed = (recording.frames - 1) * step + first + width - half
    padded = nn.functional.pad(features, (half, max(0, needed - features.shape[-1])))
    windows = padded[..., first : first + (recording.frames - 1) * step + width].unfold(-1, width, step)
    return windows.permute(2, 0, 1, 3).contiguous()  # [frames, C, F, W]


def _fit(model: nn.Module, batches: list[tuple[Tensor, Tensor]], epochs: int, seed: int) -> nn.Module:
    """Adam on the ADPIT loss over ``batches`` (inputs, targets), reshuffled every epoch; eval mode."""
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    model.train()
    for _ in range(epochs):
        for k in torch.randperm(len(batches), generator=g).tolist():
            x, y = batches[k]
            optimizer.zero_grad()
            accdoa.adpit_loss(model(x), y).backward()
            optimizer.step()
    return model.eval()


def head_predictions(
    embedder: Embedder,
    train: list[Tensor],
    train_targets: list[Tensor],
    test: list[Tensor],
    epochs: int,
    hidden: int,
    seed: int,
) -> list[np.ndarray]:
    """Multi-ACCDOA ``[frames, 3, 3, 13]`` of each test recording from a :class:`FrameHead` trained on
    the embeddings of the dev-train windows ``train`` (``[frames, C, F, W]`` per recording)."""
    x_train = [embedder.embed_audio(w) for w in train]
    x_test = [embedder.embed_audio(w) for w in test]
    flat = torch.cat(x_train)
    mean, std = flat.mean(0), flat.std(0).clamp_min(1e-6)  # standardised on dev-train only
    x = (flat - mean) / std
    y = torch.cat(train_targets)
    g = torch.Generator().manual_seed(seed)
    batches = [(x[i][:, None], y[i][:, None]) for i in torch.randperm(len(x), generator=g).split(HEAD_BATCH)]
    torch.manual_seed(seed)
    head = _fit(FrameHead(x.shape[1], hidden), batches, epochs, seed)
    with torch.no_grad():
        return [head(((e - mean) / std)[None])[0].numpy() for e in x_test]


def crnn_predictions(
    extractor: FeatureExtractor,
    train: list[SeldRecording],
    train_targets: list[Tensor],
    test: list[SeldRecording],
    epochs: int,
    seed: int,
) -> list[np.ndarray]:
    """Multi-ACCDOA of each test recording from a :class:`CRNN` trained from scratch on dev-train's
    log-mel + intensity-vector features (standardised per channel and band on dev-train) in sequences
    of :data:`SEQUENCE_FRAMES` label frames."""
    raw = extractor.unnormalised("logmel_iv")
    step = stft_frames_per_label(extractor)

    def features(r: SeldRecording) -> Tensor:
        f = raw(r.foa.double()).float()
        length = r.frames * step + 1  # the CRNN pools `step` STFT frames into each label frame
        return nn.functional.pad(f, (0, max(0, length - f.shape[-1])))[..., :length]

    train_f = [features(r) for r in train]
    cat = torch.cat(train_f, -1)
    mean, std = cat.mean(-1, keepdim=True), cat.std(-1, keepdim=True).clamp_min(1e-6)
    sequences = []
    for f, y in zip(train_f, train_targets, strict=True):
        f = (f - mean) / std
        for start in range(0, y.shape[0] - SEQUENCE_FRAMES + 1, SEQUENCE_FRAMES // 2):
            sequences.append(
                (f[..., start * step : (start + SEQUENCE_FRAMES) * step + 1], y[start:][:SEQUENCE_FRAMES])
            )
    if not sequences:
        raise ValueError(
            f"dev-train recordings are shorter than one {SEQUENCE_FRAMES * FRAME_SECONDS:g}-s sequence"
        )
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(sequences), generator=g).split(SEQUENCE_BATCH)
    batches = [
        (torch.stack([sequences[i][0] for i in idx]), torch.stack([sequences[i][1] for i in idx]))
        for idx in order
    ]
    torch.manual_seed(seed)
    model = _fit(CRNN(raw.channels, raw.n_mels, step), batches, epochs, seed)
    with torch.no_grad():
        return [model(((features(r) - mean) / std)[None])[0].numpy() for r in test]


def _frame_intensity(extractor: FeatureExtractor, r: SeldRecording) -> tuple[Tensor, Tensor, Tensor]:
    """Per label frame: azimuth and elevation (radians) of the broadband intensity vector of its 100 ms
    of audio (:func:`dataloading.features.intensity_doa`), and the energy of W in dB relative to the
    recording's loudest frame."""
    per_frame = round(extractor.sample_rate * FRAME_SECONDS)
    foa = nn.functional.pad(r.foa.double(), (0, r.frames * per_frame - r.foa.shape[-1]))
    chunks = foa.unflatten(-1, (r.frames, per_frame)).transpose(0, 1)  # [frames, 4, samples]
    az, el = intensity_doa(chunks, extractor.n_fft, extractor.hop)
    energy = chunks[:, 0].square().sum(-1)
    db = 10 * torch.log10(energy.clamp_min(1e-20) / energy.max().clamp_min(1e-20))
    return az, el, db


def intensity_events(
    az: Tensor, el: Tensor, db: Tensor, threshold_db: float, class_index: int
) -> list[Event]:
    """One event of ``class_index`` on track 0 in every frame whose energy is above ``threshold_db``."""
    active = (db > threshold_db).nonzero().flatten().tolist()
    return [Event(f, class_index, 0, float(az[f]), float(el[f])) for f in active]


def intensity_predictions(
    extractor: FeatureExtractor, train: list[SeldRecording], test: list[SeldRecording]
) -> tuple[list[list[Event]], float]:
    """The intensity baseline's events per test recording, and the threshold (dB) chosen on dev-train."""
    counts = Counter(e.class_index for r in train for e in r.events)
    class_index = counts.most_common(1)[0][0] if counts else 0
    train_frames = [_frame_intensity(extractor, r) for r in train]

    def score(threshold: float) -> float:
        parts = [
            seld_metrics.counts_of(r.events, intensity_events(*f, threshold, class_index), r.frames)
            for r, f in zip(train, train_frames, strict=True)
        ]
        return sum(parts[1:], parts[0]).scores().seld

    best = min(THRESHOLDS_DB, key=score)
    events = [intensity_events(*_frame_intensity(extractor, r), best, class_index) for r in test]
    return events, float(best)


def recordings(ctx: Context, split: str) -> list[SeldRecording]:
    """The SELD tree's ``split`` at the run's sample rate, read once per evaluation."""
    key = ("seld", ctx.suite.seld_url, split, ctx.extractor.sample_rate)
    if key not in ctx.cache:
        ctx.cache[key] = read_seld_split(ctx.suite.seld_url, split, ctx.extractor.sample_rate, ctx.storage)
    return ctx.cache[key]


def run(ctx: Context) -> TaskResult:
    suite, extractor = ctx.suite, ctx.extractor
    train, test = recordings(ctx, "dev-train"), recordings(ctx, "dev-test")
    targets = [torch.from_numpy(accdoa.targets(r.events, r.frames)).float() for r in train]
    seconds = ctx.cfg.data.audio_seconds
    windows_train = [frame_windows(extractor, r, seconds) for r in train]
    windows_test = [frame_windows(extractor, r, seconds) for r in test]
    events: dict[str, list[list[Event]]] = {}
    for method, embedder in ctx.embedders().items():
        outputs = ctx.scored(
            NAME,
            method,
            lambda e=embedder: head_predictions(
                e, windows_train, targets, windows_test, suite.seld_epochs, suite.hidden, suite.seed
            ),
        )
        events[method] = [accdoa.decode(o) for o in outputs]
    crnn = ctx.scored(
        NAME, "crnn", lambda: crnn_predictions(extractor, train, targets, test, suite.seld_epochs, suite.seed)
    )
    events["crnn"] = [accdoa.decode(o) for o in crnn]
    events["intensity"], threshold = ctx.scored(
        NAME, "intensity", lambda: intensity_predictions(extractor, train, test)
    )
    result = scored_result(test, events, suite.resamples, suite.seed)
    note = f"intensity baseline: active above {threshold:g} dB re the loudest frame (chosen on dev-train)"
    result.files = submission_files(test, events) | {"seld/per_class.md": per_class_table(result, note)}
    return result


def _weighted(parts: list[seld_metrics.SeldCounts], weights: np.ndarray) -> seld_metrics.SeldCounts:
    """The counts of recordings drawn ``weights[i]`` times each (a bootstrap replicate's sums)."""
    return sum(
        (p.scaled(float(w)) for p, w in zip(parts, weights, strict=True)), seld_metrics.SeldCounts.zero()
    )


def _metrics(scores: seld_metrics.SeldScores) -> dict[str, float]:
    return {
        "seld_score": scores.seld,
        "er20": scores.er,
        "f20": scores.f,
        "le_cd_deg": scores.le,
        "lr_cd": scores.lr,
    }


def scored_result(
    test: list[SeldRecording], events: dict[str, list[list[Event]]], resamples: int, seed: int
) -> TaskResult:
    """Every method's SELD metrics on the test recordings with 95 % intervals (recordings resampled,
    their counts summed, then scored: the metrics are ratios of sums, not means), each method's paired
    difference from random init on the same draws, and the per-class F20, LE_CD and LR_CD."""
    weights = resample_weights(len(test), resamples, seed)
    # Macro averages over the classes the test split holds: a class that never occurs would add
    # F = 0, LE = 180°, LR = 0 to every method alike (all 13 occur in STARSS23's dev-test, where this
    # is the official average).
    present = sorted({e.class_index for r in test for e in r.events})
    result = TaskResult(NAME, "seld_score", {}, chance=dict(CHANCE), classes=[CLASSES[c] for c in present])
    replicates: dict[str, dict[str, np.ndarray]] = {}
    for method, predicted in events.items():
        parts = [seld_metrics.counts_of(r.events, p, r.frames) for r, p in zip(test, predicted, strict=True)]
        whole = _weighted(parts, np.ones(len(parts))).scores(present)
        point = _metrics(whole)
        draws = [_metrics(_weighted(parts, w).scores(present)) for w in weights]
        replicates[method] = {m: np.array([d[m] for d in draws]) for m in METRICS}
        result.scores[method] = {m: interval(point[m], replicates[method][m], len(test)) for m in METRICS}
        result.per_class[method] = whole.per_class
    for method in events:
        if method == REFERENCE or REFERENCE not in events:
            continue
        result.differences[method] = {
            m: interval(
                result.scores[method][m].mean - result.scores[REFERENCE][m].mean,
                replicates[method][m] - replicates[REFERENCE][m],
                len(test),
            )
            for m in METRICS
        }
    return result


def submission_files(test: list[SeldRecording], events: dict[str, list[list[Event]]]) -> dict[str, str]:
    """``seld/<method>/<stem>.csv``: each method's predictions in the DCASE submission format."""
    return {
        f"seld/{method}/{r.stem}.csv": format_labels(p)
        for method, predicted in events.items()
        for r, p in zip(test, predicted, strict=True)
    }


def per_class_table(result: TaskResult, note: str) -> str:
    """Markdown: F20 (%), LE_CD (°) and LR_CD (%) per class and method on the whole test split; classes
    the split lacks are listed without numbers (they are left out of the macro averages)."""
    methods = list(result.per_class)
    header = "| class | " + " | ".join(f"{m} F20 % / LE ° / LR %" for m in methods) + " |"
    lines = [header, "|---" * (len(methods) + 1) + "|"]
    for name in CLASSES:
        if name not in result.classes:
            lines.append(f"| {name} | " + " | ".join("not in the test split" for _ in methods) + " |")
            continue
        cells = [
            f"{100 * c['f']:.1f} / {c['le']:.1f} / {100 * c['lr']:.1f}"
            for c in (result.per_class[m][name] for m in methods)
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", note, ""])
