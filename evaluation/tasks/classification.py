"""Sound classification: a linear probe on frozen audio embeddings, trained on the set's training
split and tested on its test split (recordings from sources the training split never uses).

Baselines: log-mel statistics + logistic regression (the same linear probe on per-band mean/std),
random init, and the input oracle. Every test clip is its own rendered scene (room, placement).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from evaluation.metrics import confusion_matrix
from evaluation.probe import classify
from evaluation.tasks import Context, Scored, TaskResult, summarise
from evaluation.tasks.features import clip_features, labeled, logmel_statistics

NAME = "classification"


def run(ctx: Context) -> TaskResult:
    url, suite = ctx.suite.classification_url, ctx.suite
    train, test = labeled(ctx, url, "train"), labeled(ctx, url, "test")
    classes = list(train.manifest["classes"])
    train_y = torch.tensor([m["label_index"] for m in train.meta])
    test_y = torch.tensor([m["label_index"] for m in test.meta])
    train_f, test_f = clip_features(ctx.extractor, train), clip_features(ctx.extractor, test)

    def probe(train_x: Tensor, test_x: Tensor) -> tuple[np.ndarray, np.ndarray]:
        predicted = classify(train_x, train_y, test_x, len(classes), suite.probe_epochs, 0, suite.seed)
        return (predicted == test_y).numpy().astype(np.float64), confusion_matrix(
            predicted, test_y, len(classes)
        )

    inputs: dict[str, Callable[[], tuple[Tensor, Tensor]]] = {
        m: lambda e=e: (e.embed_audio(train_f), e.embed_audio(test_f)) for m, e in ctx.embedders().items()
    }
    inputs["logmel_stats"] = lambda: (
        logmel_statistics(ctx.extractor, train),
        logmel_statistics(ctx.extractor, test),
    )
    scored = {m: ctx.scored(NAME, m, lambda x=x: probe(*x())) for m, x in inputs.items()}
    values = {m: hits for m, (hits, _) in scored.items()}
    confusion = {m: matrix for m, (_, matrix) in scored.items()}
    groups = np.asarray(test.keys)
    return summarise(
        NAME,
        "acc",
        {"acc": Scored(groups, values)},
        suite,
        chance={"acc": 1.0 / len(classes)},
        classes=classes,
        confusion=confusion,
    )
