"""Plackett-Luce sampling and log-probabilities, checked against direct computation of the policy."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from pyterrier_pgrank.sampling import log_probs, ranking_mask, sample_rankings, sort_rankings


def brute_force_log_prob(scores: list[float], prefix: list[int], candidates: list[int]) -> float:
    """log P(prefix) under Plackett-Luce over ``candidates``, one place at a time, in float64."""
    total, remaining = 0.0, list(candidates)
    for doc in prefix:
        top = max(scores[j] for j in remaining)
        total += scores[doc] - (top + math.log(sum(math.exp(scores[j] - top) for j in remaining)))
        remaining.remove(doc)
    return total


def test_sample_rankings_frequencies_match_plackett_luce():
    scores = torch.tensor([[1.0, 0.0, -0.5, 2.0], [0.3, 0.3, -1.0, 9.0]])
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    n_samples = 40_000
    generator = torch.Generator().manual_seed(0)
    rankings = sample_rankings(scores, mask, n_samples=n_samples, cutoff=2, generator=generator)
    assert rankings.shape == (2, n_samples, 2)

    for q in range(2):
        candidates = mask[q].nonzero().flatten().tolist()
        for prefix in itertools.permutations(candidates, 2):
            p = math.exp(brute_force_log_prob(scores[q].tolist(), list(prefix), candidates))
            freq = (rankings[q] == torch.tensor(prefix)).all(dim=-1).double().mean().item()
            # Binomial standard error; 5 sigma keeps a correct sampler passing and a skewed one failing.
            assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / n_samples) + 1e-4, (q, prefix, freq, p)


def test_sample_rankings_never_places_padding_before_a_real_candidate():
    scores = torch.tensor([[0.0, 50.0, 1.0, 80.0, 2.0]])  # the padded candidates have the highest scores
    mask = torch.tensor([[True, False, True, False, True]])
    rankings = sample_rankings(scores, mask, n_samples=500, generator=torch.Generator().manual_seed(1))
    filled = ranking_mask(rankings, mask)
    assert filled[..., :3].all() and not filled[..., 3:].any()
    assert (rankings[..., :3].sort(dim=-1).values == torch.tensor([0, 2, 4])).all()


def test_sample_rankings_reproducible_with_generator():
    scores = torch.randn(3, 7, generator=torch.Generator().manual_seed(2))
    draw = [sample_rankings(scores, n_samples=5, cutoff=3, generator=torch.Generator().manual_seed(3)) for _ in "ab"]
    assert torch.equal(draw[0], draw[1])
    assert draw[0].shape == (3, 5, 3)


def test_sample_rankings_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D floating-point"):
        sample_rankings(torch.zeros(3), n_samples=2)
    with pytest.raises(ValueError, match="mask must be a bool"):
        sample_rankings(torch.zeros(2, 3), torch.ones(2, 3), n_samples=2)
    with pytest.raises(ValueError, match="n_samples"):
        sample_rankings(torch.zeros(2, 3), n_samples=0)


def test_sort_rankings_orders_by_score_with_padding_last():
    scores = torch.tensor([[0.5, 9.0, 2.0, -1.0]])
    mask = torch.tensor([[True, False, True, True]])
    assert sort_rankings(scores, mask).tolist() == [[[2, 0, 3, 1]]]
    assert sort_rankings(scores, mask, cutoff=2).tolist() == [[[2, 0]]]


def test_log_probs_match_brute_force_with_padding():
    generator = torch.Generator().manual_seed(4)
    scores = torch.randn(3, 6, generator=generator, dtype=torch.float64)
    mask = torch.tensor([[True] * 6, [True, True, False, True, False, True], [True, False, True, False, False, False]])
    rankings = sample_rankings(scores, mask, n_samples=8, cutoff=3, generator=generator)
    got = log_probs(scores, rankings, mask)
    for q in range(3):
        candidates = mask[q].nonzero().flatten().tolist()
        for s in range(8):
            prefix = [d for d in rankings[q, s].tolist() if d in candidates]
            expected = brute_force_log_prob(scores[q].tolist(), prefix, candidates)
            assert got[q, s].item() == pytest.approx(expected, abs=1e-12)


def test_log_probs_of_all_prefixes_sum_to_one():
    scores = torch.tensor([[0.2, -1.0, 3.0, 0.2, 1.5]])
    prefixes = torch.tensor(list(itertools.permutations(range(5), 3))).unsqueeze(0)  # [1, 60, 3]
    assert log_probs(scores, prefixes).exp().sum().item() == pytest.approx(1.0, abs=1e-5)


def test_log_probs_finite_and_exact_for_huge_scores():
    scores = torch.tensor([[3.0e4, -2.0e4, 1.0e4, 3.0e4 - 1.0, -5.0e3]], requires_grad=True)
    rankings = torch.tensor([[[1, 0, 2, 3, 4], [0, 3, 2, 4, 1]]])
    got = log_probs(scores, rankings)
    got.sum().backward()
    assert torch.isfinite(got).all() and torch.isfinite(scores.grad).all()
    for s in range(2):
        expected = brute_force_log_prob(scores[0].tolist(), rankings[0, s].tolist(), list(range(5)))
        # float32 spaces numbers near 3e4 by 2e-3; the answer is exact up to that rounding of the inputs.
        assert got[0, s].item() == pytest.approx(expected, abs=1e-2)


def test_log_probs_padding_invariant_and_without_gradient():
    scores = torch.tensor([[0.4, -0.3, 1.2, 0.0]])
    rankings = torch.tensor([[[2, 0, 3], [1, 3, 0]]])
    padded_scores = torch.tensor([[0.4, 100.0, -0.3, 1.2, -7.0, 0.0]], requires_grad=True)
    padded_mask = torch.tensor([[True, False, True, True, False, True]])
    padded_rankings = torch.tensor([[[3, 0, 5], [2, 5, 0]]])  # the same candidates at their new columns
    padded = log_probs(padded_scores, padded_rankings, padded_mask)
    torch.testing.assert_close(padded, log_probs(scores, rankings))
    padded.sum().backward()
    assert padded_scores.grad[~padded_mask].eq(0).all()


def test_log_probs_gradient_passes_gradcheck():
    generator = torch.Generator().manual_seed(6)
    scores = torch.randn(2, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True] * 5, [True, False, True, True, False]])
    rankings = sample_rankings(scores, mask, n_samples=4, cutoff=4, generator=generator)
    assert torch.autograd.gradcheck(lambda s: log_probs(s, rankings, mask), (scores,))
