"""Policy-gradient estimators against the exact gradient of the expected utility, by enumerating rankings."""
from __future__ import annotations

import functools
import itertools

import pytest
import torch

from pyterrier_pgrank.estimators import ESTIMATORS, pg_loss, plrank_doc_weights
from pyterrier_pgrank.utilities import parse_utility

# Four queries: distinct scores; tied scores and tied labels; padding; nothing relevant.
SCORES = torch.tensor([
    [0.8, -0.4, 1.5, 0.0, -1.2, 0.3],
    [0.5, 0.5, 0.5, -0.7, 1.0, 0.0],
    [0.2, 9.0, -0.6, 1.1, -9.0, 0.4],
    [0.1, 1.0, -0.5, 0.0, 0.0, 2.0],
])
LABELS = torch.tensor([
    [2.0, 0.0, 1.0, 0.0, 3.0, 1.0],
    [1.0, 1.0, 0.0, 0.0, 2.0, 0.0],
    [0.0, 3.0, 2.0, 1.0, 3.0, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
])
MASK = torch.tensor([
    [True] * 6,
    [True] * 6,
    [True, False, True, True, False, True],
    [True] * 6,
])
N_RELEVANT = torch.tensor([5.0, 4.0, 3.0, 0.0])  # two relevant documents of query 1 are not candidates
ADDITIVE = ["nDCG@3", "nDCG", "DCG@2", "nDCG(dcg='exp-log2')@4", "P@2", "R@3"]
# Per estimate; plrank's estimates vary more on these small candidate sets (see BENCHMARKS.md).
SAMPLES = {"plrank": 150, "reinforce": 50}
REPLICAS = 200
ALL = [*ADDITIVE, "RR@3", "RR(rel=2)", "AP@4", "AP"]


@functools.cache
def exact_gradient(utility: str, n_relevant: tuple[float, ...] | None = None) -> torch.Tensor:
    """``[Q, N]`` gradient of each query's expected utility, summing over every permutation of its candidates."""
    metric = parse_utility(utility)
    scores = SCORES.double().clone().requires_grad_()
    total = scores.new_zeros(())
    for q in range(len(SCORES)):
        real = MASK[q].nonzero().flatten().tolist()
        padding = (~MASK[q]).nonzero().flatten().tolist()
        perms = torch.tensor([list(p) + padding for p in itertools.permutations(real)])  # [P, N]
        log_prob = scores.new_zeros(len(perms))
        for place in range(len(real)):  # Plackett-Luce, one place at a time
            log_prob = log_prob + scores[q, perms[:, place]] - scores[q, perms[:, place:len(real)]].logsumexp(-1)
        nrel = None if n_relevant is None else torch.tensor(n_relevant[q : q + 1])
        values = metric.evaluate(perms.unsqueeze(0), LABELS[q : q + 1].double(), MASK[q : q + 1], nrel)[0]
        total = total + (log_prob.exp() * values).sum()
    (gradient,) = torch.autograd.grad(total, scores)
    return gradient.float()


def estimate(utility: str, estimator: str, n_samples: int, replicas: int, n_relevant=None):
    """Mean and standard error over ``replicas`` independent estimates, each from ``n_samples`` rankings."""
    scores = SCORES.repeat(replicas, 1).requires_grad_()  # [R*Q, N], every row an independent estimate
    nrel = None if n_relevant is None else n_relevant.repeat(replicas)
    loss = pg_loss(
        scores, LABELS.repeat(replicas, 1), MASK.repeat(replicas, 1), utility=utility, estimator=estimator,
        n_samples=n_samples, generator=torch.Generator().manual_seed(0), n_relevant=nrel,
    )
    loss.backward()
    # d loss / d scores = -gradient / (R*Q) for each row.
    per_replica = (-scores.grad * scores.shape[0]).view(replicas, *SCORES.shape)  # [R, Q, N]
    return per_replica.mean(0), per_replica.std(0) / replicas**0.5, per_replica


def assert_unbiased(mean: torch.Tensor, stderr: torch.Tensor, exact: torch.Tensor) -> None:
    """Every coordinate within 5 standard errors, and the test able to see errors of 15% of the gradient."""
    assert (5 * stderr).max() < 0.15 * exact.abs().max(), "too few samples for a meaningful test"
    excess = (mean - exact).abs() - 5 * stderr - 1e-6
    assert excess.max() <= 0, f"largest error beyond 5 standard errors: {excess.max().item():.4g}"


@pytest.mark.parametrize(
    ("utility", "estimator"), [(u, e) for u in ALL for e in ESTIMATORS if e == "reinforce" or u in ADDITIVE]
)
def test_estimator_matches_exact_gradient(utility, estimator):
    exact = exact_gradient(utility)
    mean, stderr, per_replica = estimate(utility, estimator, n_samples=SAMPLES[estimator], replicas=REPLICAS)
    assert_unbiased(mean, stderr, exact)
    assert per_replica[:, 3].eq(0).all(), "a query with nothing relevant gets no gradient"
    assert per_replica[:, 2][:, ~MASK[2]].eq(0).all(), "padding gets no gradient"


@pytest.mark.parametrize(("utility", "estimator"), [("nDCG@3", "plrank"), ("R@3", "reinforce"), ("AP", "reinforce")])
def test_estimator_matches_exact_gradient_with_missing_relevant(utility, estimator):
    exact = exact_gradient(utility, tuple(N_RELEVANT.tolist()))
    assert not torch.allclose(exact, exact_gradient(utility), atol=1e-4)  # the missing documents matter here
    mean, stderr, _ = estimate(utility, estimator, SAMPLES[estimator], replicas=REPLICAS, n_relevant=N_RELEVANT)
    assert_unbiased(mean, stderr, exact)


def test_unbiasedness_check_rejects_a_wrong_target():
    # The estimate of nDCG@3's gradient must fail against nDCG@2's exact gradient.
    mean, stderr, _ = estimate("nDCG@3", "plrank", n_samples=50, replicas=REPLICAS)
    with pytest.raises(AssertionError, match="beyond 5 standard errors"):
        assert_unbiased(mean, stderr, exact_gradient("nDCG@2"))


def test_plrank_expectation_is_exact_gradient():
    # Weighting the estimate from each complete ranking by its probability gives the gradient exactly.
    metric = parse_utility("nDCG@3")
    scores, labels = SCORES[:1].double(), LABELS[:1].double()
    perms = torch.tensor(list(itertools.permutations(range(6))))  # [P, N]
    log_prob = (scores[0, perms] - scores[0, perms].flip(-1).logcumsumexp(-1).flip(-1)).sum(-1)  # [P]
    gains, weights = metric.doc_gains(labels), metric.rank_weights(3, dtype=torch.float64)
    n_perms = len(perms)
    per_perm = plrank_doc_weights(  # one query per permutation, with that permutation as its only sample
        scores.expand(n_perms, -1), perms[:, :3].unsqueeze(1), gains.expand(n_perms, -1), weights
    )  # [P, N]
    expected = (log_prob.exp().unsqueeze(-1) * per_perm).sum(0)
    torch.testing.assert_close(expected.float(), exact_gradient("nDCG@3")[0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("estimator", ["plrank", "reinforce"])
def test_pg_loss_finite_for_huge_scores(estimator):
    scores = (SCORES * 1e4).requires_grad_()
    pg_loss(scores, LABELS, MASK, utility="nDCG@3", estimator=estimator, n_samples=8,
            generator=torch.Generator().manual_seed(7)).backward()
    assert torch.isfinite(scores.grad).all()


def test_pg_loss_reuses_given_rankings_and_returns_their_utility():
    rankings = torch.tensor([[[2, 0, 5, 1]], [[4, 0, 1, 2]], [[3, 0, 5, 2]], [[0, 1, 2, 3]]]).repeat(1, 2, 1)
    scores = SCORES.clone().requires_grad_()
    loss, mean_utility = pg_loss(
        scores, LABELS, MASK, utility="P@2", estimator="reinforce", rankings=rankings, return_utility=True
    )
    torch.testing.assert_close(mean_utility, torch.tensor([1.0, 1.0, 0.5, 0.0]))
    loss.backward()  # identical samples: every advantage is zero
    assert scores.grad.eq(0).all() and not mean_utility.requires_grad


def test_pg_loss_rejects_bad_arguments():
    with pytest.raises(ValueError, match="Use estimator='reinforce'"):
        pg_loss(SCORES, LABELS, MASK, utility="RR@10", estimator="plrank")
    with pytest.raises(ValueError, match="estimator must be one of"):
        pg_loss(SCORES, LABELS, MASK, estimator="lambdarank")
    with pytest.raises(ValueError, match="at least 2 samples"):
        pg_loss(SCORES, LABELS, MASK, estimator="reinforce", n_samples=1)
    with pytest.raises(ValueError, match="labels must be shaped like scores"):
        pg_loss(SCORES, LABELS[:, :3], MASK)
    with pytest.raises(ValueError, match="rankings must be"):
        pg_loss(SCORES, LABELS, MASK, utility="nDCG@3", rankings=torch.zeros(4, 2, 2, dtype=torch.long))


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_pg_loss_handles_queries_without_candidates_or_choice(estimator):
    # Row 1 has no real candidate and row 2 only one: neither has anything to learn.
    scores = torch.randn(3, 4, generator=torch.Generator().manual_seed(5)).requires_grad_()
    labels = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [False] * 4, [True, False, False, False]])
    loss, mean_utility = pg_loss(
        scores, labels, mask, utility="R@2", estimator=estimator, generator=torch.Generator().manual_seed(6),
        return_utility=True,
    )
    loss.backward()
    assert torch.isfinite(scores.grad).all() and scores.grad[1:].eq(0).all() and scores.grad[0].ne(0).any()
    assert mean_utility[1:].eq(0).all()


@pytest.mark.parametrize("estimator", ["plrank", "reinforce"])
def test_pg_loss_padding_invariant_on_the_same_rankings(estimator):
    # Query 2 without its two padded columns; the same rankings, re-indexed, give the same gradient.
    keep = MASK[2].nonzero().flatten()  # [4] columns of the real candidates
    rankings = torch.stack([torch.randperm(4, generator=torch.Generator().manual_seed(s)) for s in range(16)])
    gradients = []
    for scores, labels, mask, ranked in (
        (SCORES[2:3], LABELS[2:3], MASK[2:3], keep[rankings].unsqueeze(0)),
        (SCORES[2:3, keep], LABELS[2:3, keep], None, rankings.unsqueeze(0)),
    ):
        scores = scores.clone().requires_grad_()
        pg_loss(scores, labels, mask, utility="nDCG@3", estimator=estimator, rankings=ranked).backward()
        gradients.append(scores.grad)
    torch.testing.assert_close(gradients[0][:, keep], gradients[1])
    assert gradients[0][:, ~MASK[2]].eq(0).all() and gradients[1].ne(0).any()
