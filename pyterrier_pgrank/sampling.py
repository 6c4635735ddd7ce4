"""The Plackett-Luce ranking policy: rankings drawn with the Gumbel top-k trick, and their log-probabilities.

A row of ``scores`` holds the log-weights of one query's candidates. The Plackett-Luce policy builds a ranking
one place at a time, choosing each remaining candidate with probability proportional to ``exp(score)``.

Shape legend: ``Q`` queries, ``N`` candidates per query (padded), ``S`` sampled rankings per query,
``K`` places kept in each ranking (the utility's cutoff, at most ``N``).

A ranking is a row of candidate indices, best first. When a query has fewer real candidates than ``K``, the
places after its last real candidate hold padding indices; every function here, and every utility, treats a
place as empty when the candidate at it is padding (``mask.gather(-1, rankings)`` is false).
"""
from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

__all__ = ["check_batch", "sample_rankings", "sort_rankings", "ranking_mask", "log_denominators", "log_probs"]


def check_batch(scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Validates a padded batch of scores and returns its mask.

    Args:
        scores: ``[Q, N]`` floating-point scores.
        mask: ``[Q, N]`` bool, true for real candidates; ``None`` means every candidate is real.

    Returns:
        The ``[Q, N]`` bool mask.

    Raises:
        ValueError: when ``scores`` is not a 2-D floating-point tensor or ``mask`` does not match it.
    """
    if scores.dim() != 2 or not scores.is_floating_point():
        raise ValueError(
            f"scores must be a 2-D floating-point tensor [Q, N]; got shape {tuple(scores.shape)}, "
            f"dtype {scores.dtype}."
        )
    if mask is None:
        return torch.ones_like(scores, dtype=torch.bool)
    if mask.shape != scores.shape or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be a bool tensor shaped like scores {tuple(scores.shape)}; "
            f"got shape {tuple(mask.shape)}, dtype {mask.dtype}."
        )
    return mask


def _depth(n_candidates: int, cutoff: int | None) -> int:
    if cutoff is not None and cutoff < 1:
        raise ValueError(f"cutoff must be a positive integer or None; got {cutoff}.")
    return n_candidates if cutoff is None else min(cutoff, n_candidates)


def sample_rankings(
    scores: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    n_samples: int,
    cutoff: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Draws rankings from the Plackett-Luce policy over ``scores`` with the Gumbel top-k trick.

    Adding independent standard Gumbel noise to every score and sorting gives an exact Plackett-Luce sample
    (Gumbel-max trick, applied place after place; Kool et al., ICML 2019, "Stochastic Beams and Where to Find
    Them"). Only the top ``K`` places are sorted, with one ``topk`` call for the whole batch.

    .. math::

        \pi = \operatorname{argsort}_{\downarrow}(s + g), \qquad g_i = -\log(-\log u_i),
        \quad u_i \sim \mathcal{U}(0, 1)

    Args:
        scores: ``[Q, N]`` log-weights (no gradient is taken through sampling).
        mask: ``[Q, N]`` bool, true for real candidates. Padding is never drawn before a real candidate.
        n_samples: ``S``, the number of rankings per query.
        cutoff: how many places to draw; ``None`` draws complete rankings. ``K = min(cutoff, N)``.
        generator: source of randomness, on the device of ``scores``, for reproducible draws.

    Returns:
        ``[Q, S, K]`` long tensor of candidate indices, best first.
    """
    mask = check_batch(scores, mask)
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1; got {n_samples}.")
    depth = _depth(scores.shape[1], cutoff)
    scores = scores.detach()
    n_queries, n_candidates = scores.shape

    # Uniforms are kept away from 0 and 1 so that the noise stays finite.
    tiny = torch.finfo(scores.dtype).tiny
    uniforms = torch.rand(
        (n_queries, n_samples, n_candidates), generator=generator, device=scores.device, dtype=scores.dtype
    )  # [Q, S, N]
    gumbels = -torch.log(-torch.log(uniforms.clamp(tiny, 1.0 - 1e-7)))
    perturbed = (scores.unsqueeze(1) + gumbels).masked_fill(~mask.unsqueeze(1), float("-inf"))  # [Q, S, N]
    return perturbed.topk(depth, dim=-1, sorted=True).indices  # [Q, S, K]


def sort_rankings(
    scores: torch.Tensor, mask: torch.Tensor | None = None, *, cutoff: int | None = None
) -> torch.Tensor:
    """The deterministic ranking by descending score, shaped like one sample per query.

    Args:
        scores: ``[Q, N]`` scores.
        mask: ``[Q, N]`` bool, true for real candidates; padding goes last.
        cutoff: how many places to keep; ``None`` keeps all ``N``.

    Returns:
        ``[Q, 1, K]`` long tensor of candidate indices, best first.
    """
    mask = check_batch(scores, mask)
    depth = _depth(scores.shape[1], cutoff)
    masked = scores.detach().masked_fill(~mask, float("-inf"))
    return masked.topk(depth, dim=-1, sorted=True).indices.unsqueeze(1)  # [Q, 1, K]


def ranking_mask(rankings: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Which places of each ranking hold a real candidate.

    Args:
        rankings: ``[Q, S, K]`` candidate indices.
        mask: ``[Q, N]`` bool, true for real candidates; ``None`` means all are real.

    Returns:
        ``[Q, S, K]`` bool.
    """
    if mask is None:
        return torch.ones_like(rankings, dtype=torch.bool)
    n_samples = rankings.shape[1]
    return mask.unsqueeze(1).expand(-1, n_samples, -1).gather(-1, rankings)  # [Q, S, K]


def log_denominators(
    scores: torch.Tensor, rankings: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Placed scores and the log of each place's Plackett-Luce normaliser, stable for any score magnitude.

    The normaliser at place ``k`` sums ``exp(score)`` over the candidates still unplaced before ``k``. It is a
    reverse cumulative log-sum-exp over the placed scores followed by one term for all the candidates left
    unplaced, so no exponential is formed outside ``logsumexp``.

    Args:
        scores: ``[Q, N]`` log-weights.
        rankings: ``[Q, S, K]`` candidate indices without repeats, best first.
        mask: ``[Q, N]`` bool, true for real candidates.

    Returns:
        ``(placed, denominators, filled)``, each ``[Q, S, K]``: the score at each place (``-inf`` when empty),
        the log-normaliser (``-inf`` when empty) and whether the place holds a real candidate.
    """
    mask = check_batch(scores, mask)
    n_samples = rankings.shape[1]
    neg_inf = torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device)
    expanded = scores.unsqueeze(1).expand(-1, n_samples, -1)  # [Q, S, N]
    filled = ranking_mask(rankings, mask)  # [Q, S, K]

    # Scores at the sampled places; an empty place weighs nothing.
    placed = torch.where(filled, expanded.gather(-1, rankings), neg_inf)  # [Q, S, K]

    # Real candidates that the prefix did not place form one tail term.
    unplaced = mask.unsqueeze(1).expand(-1, n_samples, -1).clone()  # [Q, S, N]
    unplaced.scatter_(-1, rankings, False)
    tail = torch.where(unplaced, expanded, neg_inf).logsumexp(dim=-1, keepdim=True)  # [Q, S, 1]

    # Normaliser at place k: log-sum-exp of the scores placed at k, k+1, ..., K and of the tail.
    terms = torch.cat([placed, tail], dim=-1)  # [Q, S, K+1]
    denominators = terms.flip(-1).logcumsumexp(dim=-1).flip(-1)[..., :-1]  # [Q, S, K]
    return placed, denominators, filled


def log_probs(scores: torch.Tensor, rankings: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""Log-probability of each sampled ranking prefix under the Plackett-Luce policy, differentiable.

    .. math::

        \log P(\pi_{1:K}) = \sum_{k=1}^{K} \Big( s_{\pi_k} - \log \sum_{j \notin \pi_{1:k-1}} e^{s_j} \Big)

    Exact for scores of any magnitude (see :func:`log_denominators`). Empty places (padding) add nothing, and
    padding gets no gradient.

    Args:
        scores: ``[Q, N]`` log-weights.
        rankings: ``[Q, S, K]`` candidate indices without repeats, best first.
        mask: ``[Q, N]`` bool, true for real candidates.

    Returns:
        ``[Q, S]`` log-probabilities.
    """
    placed, denominators, filled = log_denominators(scores, rankings, mask)
    zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
    return torch.where(filled, placed - denominators, zero).sum(dim=-1)  # [Q, S]
