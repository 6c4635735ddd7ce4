r"""Policy-gradient estimators of the gradient of an expected IR metric under a Plackett-Luce ranking policy.

Shape legend: ``Q`` queries, ``N`` candidates per query (padded), ``S`` sampled rankings per query,
``K`` places in each ranking (the utility's cutoff, at most ``N``).

Both estimators return a scalar surrogate loss whose gradient with respect to ``scores`` is an unbiased
estimate of minus the gradient of the expected utility, averaged over queries:

.. math::

    \nabla_s \mathcal{L} \approx -\frac{1}{Q} \sum_{q} \nabla_{s_q} \mathbb{E}_{\pi \sim PL(s_q)}[U(\pi)]

One backward pass serves all ``S`` samples. The surrogate's value is not the utility; ask
:func:`pg_loss` for ``return_utility=True`` to log the mean utility of the sampled rankings.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from pyterrier_pgrank.sampling import check_batch, log_denominators, log_probs, sample_rankings
from pyterrier_pgrank.utilities import Utility, parse_utility

logger = logging.getLogger(__name__)

__all__ = ["pg_loss", "reinforce_loss", "plrank_doc_weights", "ESTIMATORS"]

#: Names accepted by ``pg_loss(estimator=...)``.
ESTIMATORS = ("plrank", "reinforce")


def reinforce_loss(
    scores: torch.Tensor, rankings: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    r"""REINFORCE with the leave-one-out baseline, as in Neural PG-Rank (Gao et al., NeurIPS 2023).

    Each sample's baseline is the mean reward of the other ``S - 1`` samples of its query, which does not
    depend on that sample, so the estimate stays unbiased.

    .. math::

        \hat\nabla = \frac{1}{S} \sum_{i=1}^{S} \Big(U(\pi_i) - \frac{1}{S-1} \sum_{j \ne i} U(\pi_j)\Big)
        \nabla_s \log P(\pi_i)

    Args:
        scores: ``[Q, N]`` log-weights with autograd graph.
        rankings: ``[Q, S, K]`` sampled candidate indices (``S >= 2``).
        rewards: ``[Q, S]`` utility of each ranking.
        mask: ``[Q, N]`` bool, true for real candidates.

    Returns:
        Scalar surrogate loss, averaged over queries.
    """
    n_samples = rankings.shape[1]
    if n_samples < 2:
        raise ValueError(f"reinforce needs at least 2 samples per query for its baseline; got {n_samples}.")
    rewards = rewards.detach()
    baseline = (rewards.sum(dim=1, keepdim=True) - rewards) / (n_samples - 1)  # [Q, S]
    advantages = rewards - baseline  # [Q, S]
    return -(advantages * log_probs(scores, rankings, mask)).mean(dim=1).mean()


@torch.no_grad()
def plrank_doc_weights(
    scores: torch.Tensor,
    rankings: torch.Tensor,
    doc_gains: torch.Tensor,
    rank_weights: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Per-document gradient of the expected utility, estimated in the manner of PL-Rank-3.

    For a utility :math:`U(\pi) = \sum_k \theta_k \rho_{\pi_k}` (place weights :math:`\theta`, document gains
    :math:`\rho`), Oosterhuis (SIGIR 2022, "Learning-to-Rank at the Speed of Sampling") estimates, for each
    sampled ranking with reward-to-go :math:`R_k = \sum_{x \ge k} \theta_x \rho_{\pi_x}`,

    .. math::

        \hat\nabla_{s_d} = \mathbb{1}[d \in \pi_{1:K}] R_{r_d + 1}
            + \sum_{k=1}^{\min(r_d, K)} P(d \mid \pi_{1:k-1}) (\theta_k \rho_d - R_k)

    where :math:`r_d` is the place of :math:`d` (infinite when unplaced). The sum over places is
    :math:`e^{s_d} (\rho_d C^\theta_{r_d} - C^R_{r_d})` with the prefix sums
    :math:`C^x_k = \sum_{j \le k} x_j / Z_j` of the normalisers :math:`Z_j`, computed in log space:
    the cost is :math:`O(S (N + K))` per query and the weights are finite for any score magnitude.

    .. note::
        Only utilities that are a sum of per-place gains qualify (DCG, nDCG, P, R); RR and AP are not.

    Args:
        scores: ``[Q, N]`` log-weights (no gradient is taken).
        rankings: ``[Q, S, K]`` sampled candidate indices.
        doc_gains: ``[Q, N]`` per-document gains :math:`\rho` (zero for padding).
        rank_weights: ``[K]`` per-place weights :math:`\theta`, positive.
        mask: ``[Q, N]`` bool, true for real candidates.

    Returns:
        ``[Q, N]`` estimated gradient of each query's expected utility (zero for padding).
    """
    mask = check_batch(scores, mask)
    scores = scores.detach()
    n_samples, depth = rankings.shape[1:]
    _, denominators, filled = log_denominators(scores, rankings, mask)  # [Q, S, K]
    expanded_gains = doc_gains.to(scores.dtype).unsqueeze(1).expand(-1, n_samples, -1)  # [Q, S, N]
    neg_inf = torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device)

    # Reward of each place, reward-to-go R_k, and the reward after each place R_{k+1}.
    place_rewards = expanded_gains.gather(-1, rankings) * rank_weights.to(scores) * filled  # [Q, S, K]
    to_go = place_rewards.flip(-1).cumsum(dim=-1).flip(-1)  # [Q, S, K]
    after = to_go - place_rewards  # [Q, S, K]

    # Log prefix sums of theta_k / Z_k and R_k / Z_k over the filled places.
    log_theta = torch.where(filled, rank_weights.to(scores).log() - denominators, neg_inf)
    log_to_go = torch.where(filled, to_go.log() - denominators, neg_inf)
    log_c_theta = log_theta.logcumsumexp(dim=-1)  # [Q, S, K]
    log_c_to_go = log_to_go.logcumsumexp(dim=-1)  # [Q, S, K]

    # Place of each candidate; an unplaced one stays in the running until the last place.
    places = torch.arange(depth, device=scores.device).expand_as(rankings)  # [Q, S, K]
    shape = (*rankings.shape[:2], scores.shape[1])
    doc_places = torch.full(shape, depth - 1, dtype=torch.long, device=scores.device)  # [Q, S, N]
    doc_places.scatter_(-1, rankings, places)
    is_placed = torch.zeros(shape, dtype=torch.bool, device=scores.device).scatter_(-1, rankings, filled)

    # Combine the three terms per candidate and average over samples.
    expanded_scores = scores.unsqueeze(1)  # [Q, 1, N]
    weights = (
        torch.where(is_placed, after.gather(-1, doc_places), torch.zeros_like(after[..., :1]))
        + expanded_gains * (expanded_scores + log_c_theta.gather(-1, doc_places)).exp()
        - (expanded_scores + log_c_to_go.gather(-1, doc_places)).exp()
    )  # [Q, S, N]
    return weights.mean(dim=1).masked_fill(~mask, 0.0)  # [Q, N]


def pg_loss(
    scores: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    utility: str | Any | Utility = "nDCG@10",
    estimator: str = "plrank",
    n_samples: int = 32,
    generator: torch.Generator | None = None,
    n_relevant: torch.Tensor | None = None,
    rankings: torch.Tensor | None = None,
    return_utility: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Policy-gradient loss of a Plackett-Luce ranking policy for an IR metric.

    Samples ``S`` rankings per query from the policy (Gumbel top-k, only the ``K`` places the metric reads),
    scores them with the metric, and returns a surrogate whose gradient is an unbiased estimate of minus
    the gradient of the mean expected metric over queries.

    Args:
        scores: ``[Q, N]`` ranker scores (the policy's log-weights), with autograd graph.
        labels: ``[Q, N]`` relevance grades.
        mask: ``[Q, N]`` bool, true for real candidates; padding is never sampled, never counts and gets no
            gradient. ``None``: every candidate is real.
        utility: the metric, as a name (``"nDCG@10"``, ``"RR@10"``, ``"R@100"``, ``"AP"``, ``"DCG@5"``) or a
            ``pyterrier.measures`` object.
        estimator: ``"plrank"`` (PL-Rank-3 weights; additive metrics only; on 100 candidates it needed a
            quarter to a half of reinforce's samples for the same gradient error) or ``"reinforce"``
            (leave-one-out REINFORCE; any metric).
        n_samples: ``S``, rankings sampled per query.
        generator: source of randomness for the sampling.
        n_relevant: ``[Q]`` number of relevant documents per query, including those missing from the
            candidates; used by nDCG's ideal ranking and by R and AP. ``None``: the relevant candidates.
        rankings: ``[Q, S, K']`` pre-drawn samples (``K' >= K``) to use instead of drawing new ones.
        return_utility: also return the mean utility of the sampled rankings per query.

    Returns:
        The scalar loss, or ``(loss, mean_utility)`` with ``mean_utility`` ``[Q]`` detached.

    Raises:
        ValueError: for mismatched shapes, an unknown estimator, or ``plrank`` with a non-additive metric.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}; got {estimator!r}.")
    metric = parse_utility(utility)
    if estimator == "plrank" and not metric.additive:
        raise ValueError(
            f"estimator='plrank' needs a metric that is a sum of per-place gains (nDCG, DCG, P, R); "
            f"{metric.name} is not. Use estimator='reinforce'."
        )
    mask = check_batch(scores, mask)
    if labels.shape != scores.shape:
        raise ValueError(
            f"labels must be shaped like scores {tuple(scores.shape)}; got {tuple(labels.shape)}."
        )
    depth = metric.depth(scores.shape[1])

    # Draw the rankings (or check the ones given) and score them with the metric.
    if rankings is None:
        rankings = sample_rankings(scores, mask, n_samples=n_samples, cutoff=depth, generator=generator)
    elif rankings.dim() != 3 or rankings.shape[0] != scores.shape[0] or rankings.shape[2] < depth:
        raise ValueError(
            f"rankings must be [Q={scores.shape[0]}, S, K>={depth}] candidate indices; "
            f"got shape {tuple(rankings.shape)}."
        )
    rankings = rankings[..., :depth]  # [Q, S, K]
    rewards = metric.evaluate(rankings, labels, mask, n_relevant)  # [Q, S]

    # Surrogate whose gradient is the estimate.
    if estimator == "reinforce":
        loss = reinforce_loss(scores, rankings, rewards, mask)
    else:
        doc_gains = metric.doc_gains(labels.to(rewards.dtype), mask, n_relevant)  # [Q, N]
        rank_weights = metric.rank_weights(depth, dtype=rewards.dtype, device=scores.device)  # [K]
        doc_weights = plrank_doc_weights(scores, rankings, doc_gains, rank_weights, mask)  # [Q, N]
        loss = -(doc_weights.to(scores.dtype) * scores).sum(dim=-1).mean()
    if return_utility:
        return loss, rewards.mean(dim=1).detach()
    return loss
