r"""Checks that a model's training hooks agree with each other, for the models' own tests.

The trainer relies on ``_pgrank_backward(batch, doc_weights)`` accumulating the gradient of
``(doc_weights * scores).sum()`` for the very function ``_pgrank_scores`` computes. Since the hooks recompute
the scores chunk by chunk, a mistake (a chunk skipped, padding scored, dropout left on) changes the gradient
silently. :func:`check_backward` compares the hook's gradient :math:`g` with central finite differences of
``_pgrank_scores`` along a random unit direction :math:`v` in parameter space:

.. math::

    \frac{f(\theta + \epsilon v) - f(\theta - \epsilon v)}{2 \epsilon} \approx \langle g, v \rangle,
    \qquad f(\theta) = \sum_{q, n} w_{qn} \, s_{qn}(\theta)

.. note::
    One direction checks one projection of the gradient, whose size shrinks like :math:`1/\sqrt{P}` with
    the number of parameters :math:`P` while the finite-difference error does not: use small models
    (such as a 2-layer, 32-dimensional BERT) and several seeds.

Shapes: ``Q`` queries, ``N`` candidates.
"""
from __future__ import annotations

import torch

from pyterrier_pgrank.data import CandidateBatch

__all__ = ["check_backward"]


@torch.no_grad()
def _objective(model, batch: CandidateBatch, doc_weights: torch.Tensor) -> float:
    scores = model._pgrank_scores(batch).double()  # [Q, N]
    return float((doc_weights.double() * scores).masked_fill(~batch.mask, 0.0).sum())


def check_backward(model, batch: CandidateBatch, doc_weights: torch.Tensor | None = None, *,
                   eps: float = 1e-3, seed: int = 0) -> tuple[float, float]:
    """Compares the gradient of ``_pgrank_backward`` with finite differences of ``_pgrank_scores``.

    Args:
        model: A model with the ``_pgrank_module``, ``_pgrank_scores`` and ``_pgrank_backward`` hooks, in the
            train/eval mode to check.
        batch: A batch on the model's device.
        doc_weights: ``[Q, N]`` weights (zero on padding); random normal ones when ``None``.
        eps: Step of the central difference along the unit direction.
        seed: Seeds the random direction and the random ``doc_weights``.

    Returns:
        ``(hook, finite_difference)``: the directional derivative as given by the hook's gradient, and as
        measured by finite differences. They agree up to the finite-difference error when
        the hooks are consistent. The model's parameters and gradients are left as they were.
    """
    module = model._pgrank_module()
    parameters = [p for p in module.parameters() if p.requires_grad]
    if doc_weights is None:
        generator = torch.Generator().manual_seed(seed)
        doc_weights = torch.randn(batch.mask.shape, generator=generator).to(batch.mask.device)
    doc_weights = doc_weights.masked_fill(~batch.mask, 0.0)  # [Q, N]
    saved = [p.grad for p in parameters]

    # the hook's gradient
    for p in parameters:
        p.grad = None
    model._pgrank_backward(batch, doc_weights)
    grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in parameters]
    if all(not g.any() for g in grads):
        raise ValueError("_pgrank_backward gave a zero gradient; expected some trainable parameter to change scores")

    # a random unit direction
    generator = torch.Generator().manual_seed(seed + 1)
    direction = [torch.randn(p.shape, generator=generator, dtype=torch.float64) for p in parameters]
    direction_norm = torch.sqrt(sum((d ** 2).sum() for d in direction))
    direction = [(d / direction_norm).to(p.device, p.dtype) for d, p in zip(direction, parameters)]
    hook = float(sum((g.double() * d.double()).sum() for g, d in zip(grads, direction)))

    # central difference along it
    values = []
    with torch.no_grad():
        for sign in (1.0, -1.0):
            for p, d in zip(parameters, direction):
                p.add_(d, alpha=sign * eps)
            values.append(_objective(model, batch, doc_weights))
            for p, d in zip(parameters, direction):
                p.sub_(d, alpha=sign * eps)
    for p, grad in zip(parameters, saved):
        p.grad = grad
    return hook, (values[0] - values[1]) / (2 * eps)
