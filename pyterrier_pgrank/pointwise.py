"""Pointwise binary cross-entropy training through the shared trainer: the baseline PG-Rank is compared with.

:func:`pointwise_bce_loss` has the call signature of :func:`pyterrier_pgrank.estimators.pg_loss`, so the
policy-gradient :class:`~pyterrier_pgrank.training.Trainer` runs it unchanged: the same candidate sets, the
same batches, the same number of steps, the same optimiser, schedule, chunked backward and validation. Only
the per-document weights on the scores differ: the gradient of a classification loss that treats every
(query, document) pair on its own, instead of the gradient of the expected metric of the ranking.
:func:`fit_pointwise` is ``model.fit`` with this loss.

Shapes: ``Q`` queries, ``N`` candidates per query (padded), ``K`` places the metric reads.
"""
from __future__ import annotations

import logging
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from pyterrier_pgrank.utilities import parse_utility

logger = logging.getLogger(__name__)

__all__ = ["pointwise_bce_loss", "fit_pointwise"]


def pointwise_bce_loss(
    scores: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    utility: Any = "nDCG@10",
    n_relevant: torch.Tensor | None = None,
    return_utility: bool = False,
    **unused: Any,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Binary cross-entropy of each candidate's score against its relevance, averaged over real candidates.

    .. math::
        \\mathcal{L} = -\\frac{1}{|M|} \\sum_{(q,n) \\in M} y_{qn} \\log \\sigma(s_{qn})
        + (1 - y_{qn}) \\log (1 - \\sigma(s_{qn})), \\qquad y_{qn} = [\\ell_{qn} \\ge \\mathrm{rel}]

    where :math:`M` are the real candidates and ``rel`` the utility's relevance threshold (1 by default).

    Args:
        scores: ``[Q, N]`` logits, with autograd graph.
        labels: ``[Q, N]`` relevance grades.
        mask: ``[Q, N]`` bool, true for real candidates; ``None``: all are real.
        utility: the metric reported alongside the loss (and whose threshold makes labels binary).
        n_relevant: ``[Q]`` count of all relevant documents per query, for the reported metric.
        return_utility: also return the metric of the ranking by score, per query.
        **unused: the sampling options of ``pg_loss`` (``estimator``, ``n_samples``, ``generator``, ...),
            accepted so that the trainer can call either loss, and ignored.

    Returns:
        The scalar loss, or ``(loss, utility [Q])`` where ``utility`` is the metric of the deterministic
        ranking by score (detached); the policy-gradient loss reports sampled rankings instead.
    """
    if labels.shape != scores.shape:
        raise ValueError(f"labels must be shaped like scores {tuple(scores.shape)}; got {tuple(labels.shape)}.")
    mask = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask
    metric = parse_utility(utility)
    targets = (labels >= metric.rel).to(scores.dtype)  # [Q, N]
    losses = F.binary_cross_entropy_with_logits(scores, targets, reduction="none")  # [Q, N]
    loss = losses.masked_fill(~mask, 0.0).sum() / mask.sum().clamp(min=1)
    if not return_utility:
        return loss

    # the metric of the ranking by score, padding last
    depth = metric.depth(scores.shape[1])
    ranking = scores.detach().masked_fill(~mask, float("-inf")).argsort(dim=1, descending=True)  # [Q, N]
    values = metric.evaluate(ranking[:, None, :depth], labels, mask, n_relevant)  # [Q, 1]
    return loss, values[:, 0]


def fit_pointwise(model: Any, train: pd.DataFrame, train_qrels: pd.DataFrame, valid: pd.DataFrame | None = None,
                  valid_qrels: pd.DataFrame | None = None, **settings: Any) -> Any:
    """Trains ``model`` as ``model.fit`` does, with :func:`pointwise_bce_loss` in place of the PG loss.

    Args:
        model: a :class:`~pyterrier_pgrank.training.PGRankEstimator` (cross-encoder or bi-encoder).
        train, train_qrels, valid, valid_qrels: as for ``model.fit``.
        **settings: overrides of :class:`~pyterrier_pgrank.settings.TrainingSettings` fields; ``estimator``
            and ``n_samples`` have no effect.

    Returns:
        The model, trained; its ``training_history`` holds the history, whose ``utility`` entries are the
        metric of the ranking by score on the training batches.
    """
    return model.fit(train, train_qrels, valid, valid_qrels, loss_fn=pointwise_bce_loss, **settings)
