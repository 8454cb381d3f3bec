"""Sound classification: a linear probe on frozen audio embeddings, trained on the set's training
split and tested on its test split (recordings from sources the training split never uses).

Baselines: log-mel statistics + logistic regression (the same linear probe on per-band mean/std),
and the random-init encoder.
"""

from __future__ import annotations

import torch

from evaluation.datasets import read_split
from evaluation.metrics import accuracy, confusion_matrix
from evaluation.probe import classify
from evaluation.tasks import Context, TaskResult
from evaluation.tasks.features import clip_features, logmel_statistics

NAME = "classification"


def run(ctx: Context) -> TaskResult:
    url, data, suite = ctx.suite.classification_url, ctx.model.cfg.data, ctx.suite
    train, test = read_split(url, "train", ctx.storage), read_split(url, "test", ctx.storage)
    classes = list(train.manifest["classes"])
    train_y = torch.tensor([m["label_index"] for m in train.meta])
    test_y = torch.tensor([m["label_index"] for m in test.meta])
    train_f, test_f = clip_features(data, train), clip_features(data, test)
    inputs = {
        "model": (ctx.model.embed_audio(train_f), ctx.model.embed_audio(test_f)),
        "random_init": (ctx.random_init.embed_audio(train_f), ctx.random_init.embed_audio(test_f)),
        "logmel_stats": (logmel_statistics(data, train), logmel_statistics(data, test)),
    }
    result = TaskResult(NAME, "acc", {}, classes=classes)
    for method, (train_x, test_x) in inputs.items():
        predicted = classify(train_x, train_y, test_x, len(classes), suite.probe_epochs, 0, suite.seed)
        result.scores[method] = {"acc": accuracy(predicted, test_y)}
        result.confusion[method] = confusion_matrix(predicted, test_y, len(classes))
    return result
