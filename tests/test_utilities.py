"""Utilities on sampled rankings, checked against ir_measures (pytrec_eval) on the same rankings."""
from __future__ import annotations

import math

import ir_measures
import pytest
import torch

from pyterrier_pgrank.utilities import Utility, parse_utility

N_MISSING = torch.tensor([1, 8, 1, 0])  # relevant documents (label 1) missing from the candidates: more than N


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Graded labels (one negative), padding, an all-irrelevant query, three random complete rankings per query."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (4, 9), generator=generator).float()
    labels[torch.rand(4, 9, generator=generator) > 0.5] = 0.0  # few relevant, so missing ones matter
    labels[2] = 0.0
    labels[0, 1] = -1.0  # a judged-harmful document: no gain, as in trec_eval
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[1, 6:] = False
    mask[3, [0, 4]] = False
    noise = torch.rand(4, 3, 9, generator=generator).masked_fill(~mask.unsqueeze(1), -1.0)
    rankings = noise.argsort(dim=-1, descending=True)  # [Q, S, N], padding last
    return labels, mask, rankings


def reference(measure, labels, mask, rankings, n_missing=None) -> torch.Tensor:
    """``[Q, S]`` values from ir_measures, each sampled ranking run as its own query."""
    qrels, run = [], []
    for q in range(labels.shape[0]):
        for s in range(rankings.shape[1]):
            qid = f"{q}-{s}"
            qrels += [ir_measures.Qrel(qid, f"d{d}", int(labels[q, d])) for d in range(labels.shape[1]) if mask[q, d]]
            if n_missing is not None:
                qrels += [ir_measures.Qrel(qid, f"missing{i}", 1) for i in range(int(n_missing[q]))]
            placed = [d for d in rankings[q, s].tolist() if mask[q, d]]
            run += [ir_measures.ScoredDoc(qid, f"d{d}", float(len(placed) - i)) for i, d in enumerate(placed)]
    values = {m.query_id: m.value for m in ir_measures.iter_calc([measure], qrels, run)}
    return torch.tensor([[values.get(f"{q}-{s}", 0.0) for s in range(rankings.shape[1])] for q in range(len(labels))])


MEASURES = [
    ir_measures.nDCG @ 5, ir_measures.nDCG, ir_measures.P @ 3, ir_measures.P(rel=2) @ 4, ir_measures.R @ 5,
    ir_measures.RR @ 4, ir_measures.RR(rel=3), ir_measures.AP @ 5, ir_measures.AP(rel=2),
]


@pytest.mark.parametrize("measure", MEASURES, ids=str)
def test_utility_matches_ir_measures(batch, measure):
    labels, mask, rankings = batch
    got = parse_utility(measure).evaluate(rankings, labels, mask)
    torch.testing.assert_close(got, reference(measure, labels, mask, rankings).float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["nDCG@5", "nDCG@20", "nDCG", "R@5", "R@20", "AP@6", "AP"])
def test_utility_counts_missing_relevant_documents(batch, name):
    labels, mask, rankings = batch
    n_relevant = ((labels >= 1) & mask).sum(dim=-1) + N_MISSING
    got = parse_utility(name).evaluate(rankings, labels, mask, n_relevant=n_relevant)
    expected = reference(ir_measures.parse_measure(name), labels, mask, rankings, N_MISSING)
    torch.testing.assert_close(got, expected.float(), atol=1e-5, rtol=1e-5)


def test_exp_log2_matches_ir_measures_with_exponential_gains(batch):
    labels, mask, rankings = batch
    got = parse_utility("nDCG(dcg='exp-log2')@5").evaluate(rankings, labels, mask)
    # pytrec_eval reads 2^label - 1 as a custom gain mapping.
    measure = ir_measures.nDCG(gains={g: 2**g - 1 for g in range(4)}) @ 5
    torch.testing.assert_close(got, reference(measure, labels, mask, rankings).float(), atol=1e-5, rtol=1e-5)


def test_dcg_matches_hand_computation():
    labels = torch.tensor([[3.0, 0.0, 1.0, 2.0]])
    rankings = torch.tensor([[[2, 0, 1, 3], [3, 1, 0, 2]]])
    expected = [1 / math.log2(2) + 3 / math.log2(3), 2 / math.log2(2) + 0 + 3 / math.log2(4)]
    torch.testing.assert_close(parse_utility("DCG@3").evaluate(rankings, labels)[0], torch.tensor(expected))
    exp_gains = [1 + 7 / math.log2(3), 3 + 7 / math.log2(4)]
    got = parse_utility("DCG(dcg='exp-log2')@3").evaluate(rankings, labels)[0]
    torch.testing.assert_close(got, torch.tensor(exp_gains))


def test_utility_padding_invariant(batch):
    labels, mask, rankings = batch
    wide_labels = torch.cat([labels, torch.full((4, 3), 3.0)], dim=-1)  # padded columns look very relevant
    wide_mask = torch.cat([mask, torch.zeros(4, 3, dtype=torch.bool)], dim=-1)
    n_relevant = ((labels >= 1) & mask).sum(dim=-1) + N_MISSING
    for name in ["nDCG@5", "nDCG@20", "P@3", "R@5", "RR@4", "AP", "DCG@10"]:
        utility = parse_utility(name)
        for count in (None, n_relevant):
            wide = utility.evaluate(rankings, wide_labels, wide_mask, count)
            torch.testing.assert_close(wide, utility.evaluate(rankings, labels, mask, count))


def test_additive_utility_is_rank_weights_times_doc_gains(batch):
    labels, mask, rankings = batch
    utility = parse_utility("nDCG@4")
    gains = utility.doc_gains(labels, mask)  # [Q, N]
    per_place = gains.unsqueeze(1).expand(-1, 3, -1).gather(-1, rankings[..., :4]) * mask.unsqueeze(1).expand(
        -1, 3, -1
    ).gather(-1, rankings[..., :4])
    torch.testing.assert_close((per_place * utility.rank_weights(4)).sum(-1), utility.evaluate(rankings, labels, mask))


def test_parse_utility_names_and_measure_objects():
    from pyterrier.measures import RR, nDCG

    assert parse_utility("nDCG@10") == Utility("nDCG", cutoff=10)
    assert parse_utility(nDCG @ 10) == Utility("nDCG", cutoff=10)
    assert parse_utility(RR(rel=2) @ 5) == Utility("RR", cutoff=5, rel=2)
    assert parse_utility("DCG(dcg='exp-log2')@5") == Utility("DCG", cutoff=5, dcg="exp-log2")
    assert parse_utility("AP").cutoff is None
    for name in ["nDCG@10", "RR(rel=2)@5", "nDCG(dcg='exp-log2')@10", "DCG@3", "AP"]:
        assert parse_utility(name).name == name
    assert parse_utility("P@5").additive and not parse_utility("RR@5").additive


@pytest.mark.parametrize("bad", ["ERR@10", "P", "R", "nDCG(judged_only=True)@10", "not a measure", 3])
def test_parse_utility_rejects_unsupported(bad):
    with pytest.raises(ValueError):
        parse_utility(bad)
