"""Heads trained on frozen features: the linear probe, MLP classifiers and a direction regressor.

Every head sees standardised features (statistics from its training split only). The linear probe
is multinomial logistic regression solved to convergence (L-BFGS, scikit-learn): a convex problem
whose answer does not depend on a step budget, which matters for small labeled sets. The MLP heads
are trained with Adam on mini-batches for a given number of epochs, seeded, so an evaluation is
reproducible. Heads are tiny next to the encoders: they run on the CPU whatever made the features.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

BATCH = 256  # examples per step: a few hundred pairs train in a few steps per epoch (4× less CPU than 64)
LR = 3e-3  # with batches of 256: the step budget of 64 at 1e-3, in a quarter of the steps
WEIGHT_DECAY = 1e-4
LOGISTIC_MAX_ITER = 5000  # L-BFGS iterations; standardised probes converge in far fewer


def standardise(train: Tensor, *others: Tensor) -> tuple[Tensor, ...]:
    """Every tensor scaled by the per-feature mean and std of ``train`` (constant features stay 0)."""
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    return tuple((x - mean) / std for x in (train, *others))


def head(in_dim: int, out_dim: int, hidden: int) -> nn.Module:
    """One hidden ReLU layer of ``hidden`` units."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


def fit(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    epochs: int,
    seed: int,
) -> nn.Module:
    """Train ``model`` on (x, y) for ``epochs`` shuffled passes of mini-batches; returns it in eval mode."""
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(BATCH):
            optimizer.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            optimizer.step()
    return model.eval()


def _logistic(train_x: Tensor, train_y: Tensor) -> Any:
    """Logistic regression fitted to convergence on standardised ``train_x`` (scikit-learn, L-BFGS)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=LOGISTIC_MAX_ITER).fit(train_x.numpy(), train_y.numpy())


def linear_scores(train_x: Tensor, train_y: Tensor, test_x: Tensor) -> Tensor:
    """Scores of a linear binary classifier (logistic regression on standardised features) for
    ``test_x``: larger means more likely positive (``train_y`` is 1 or True for positives)."""
    train_x, test_x = standardise(train_x.float(), test_x.float())
    return torch.from_numpy(_logistic(train_x, train_y.long()).decision_function(test_x.numpy()))


def classify(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    classes: int,
    epochs: int,
    hidden: int = 0,
    seed: int = 0,
) -> Tensor:
    """Predicted labels of ``test_x`` from a head trained on (``train_x``, ``train_y``) with cross-entropy.

    ``hidden=0`` is the linear probe (logistic regression to convergence; ``epochs`` is not used);
    otherwise an MLP with one hidden layer of that many units trained for ``epochs``.
    """
    train_x, test_x = standardise(train_x.float(), test_x.float())
    if hidden == 0:
        return torch.from_numpy(_logistic(train_x, train_y).predict(test_x.numpy())).long()
    torch.manual_seed(seed)  # the head's initial weights
    model = fit(
        head(train_x.shape[1], classes, hidden),
        train_x,
        train_y.long(),
        nn.functional.cross_entropy,
        epochs,
        seed,
    )
    with torch.no_grad():
        return model(test_x).argmax(-1)


def regress_direction(
    train_x: Tensor, train_dir: Tensor, test_x: Tensor, epochs: int, hidden: int = 64, seed: int = 0
) -> Tensor:
    """Unit direction vectors ``[N, 3]`` for ``test_x`` from a head trained to maximise the cosine to
    the training directions ``train_dir`` ``[M, 3]`` (unit vectors)."""
    train_x, test_x = standardise(train_x.float(), test_x.float())
    torch.manual_seed(seed)

    def loss(pred: Tensor, target: Tensor) -> Tensor:
        return 1 - nn.functional.cosine_similarity(pred, target, dim=-1).mean()

    model = fit(head(train_x.shape[1], 3, hidden), train_x, train_dir.float(), loss, epochs, seed)
    with torch.no_grad():
        return nn.functional.normalize(model(test_x), dim=-1)
