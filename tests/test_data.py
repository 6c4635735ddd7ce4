"""Tests of pyterrier_pgrank.data: candidate sets from frames and qrels, padded batches, bad input."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from pyterrier_pgrank.data import build_candidate_sets, collate


def _res(rows):
    return pd.DataFrame(rows, columns=["qid", "query", "docno", "text", "score"])


@pytest.fixture
def res():
    return _res([
        ("q1", "a b", "d1", "x", 3.0), ("q1", "a b", "d2", "y", 2.0), ("q1", "a b", "d3", "z", 1.0),
        ("q2", "c", "d4", "u", 5.0), ("q2", "c", "d1", "x", 4.0),
        ("q3", "e", "d5", "v", 1.0),
    ])


@pytest.fixture
def qrels():
    return pd.DataFrame({"qid": ["q1", "q1", "q1", "q2", "q3", "q4"],
                         "docno": ["d2", "d3", "d9", "d1", "d5", "d1"],
                         "label": [2, 0, 1, 1, 0, 1]})


def test_build_candidate_sets_merges_labels_and_counts_missed_relevant(res, qrels):
    with pytest.warns(UserWarning, match="dropped 1 of 3 queries"):
        sets = build_candidate_sets(res, qrels)
    by_qid = {s.qid: s for s in sets}
    assert list(by_qid) == ["q1", "q2"]  # q3 has no relevant candidate
    q1 = by_qid["q1"]
    assert q1.docnos == ["d1", "d2", "d3"] and q1.texts == ["x", "y", "z"] and q1.query == "a b"
    assert q1.labels.tolist() == [0.0, 2.0, 0.0]
    assert q1.n_relevant == 2.0  # d2 and d9; d9 was missed by the first stage
    assert by_qid["q2"].labels.tolist() == [0.0, 1.0] and by_qid["q2"].n_relevant == 1.0


def test_build_candidate_sets_keeps_unlearnable_queries_for_validation(res, qrels):
    sets = build_candidate_sets(res, qrels, drop_unlearnable=False)
    assert [s.qid for s in sets] == ["q1", "q2", "q3"]
    assert sets[2].labels.tolist() == [0.0] and sets[2].n_relevant == 0.0


def test_build_candidate_sets_relevance_level_sets_n_relevant(res, qrels):
    with pytest.warns(UserWarning, match="dropped 2 of 3"):
        sets = build_candidate_sets(res, qrels, relevance_level=2)
    assert [(s.qid, s.n_relevant) for s in sets] == [("q1", 1.0)]


def test_build_candidate_sets_without_text_column(res, qrels):
    sets = build_candidate_sets(res.drop(columns="text"), qrels, drop_unlearnable=False)
    assert all(s.texts is None for s in sets)
    with pytest.raises(ValueError, match=r"missing \['text'\]"):
        build_candidate_sets(res.drop(columns="text"), qrels, require_text=True)


def test_build_candidate_sets_topics_only_gets_pipeline_hint(qrels):
    topics = pd.DataFrame({"qid": ["q1"], "query": ["a b"]})
    with pytest.raises(ValueError, match=r"no candidate documents.*bm25 % 100"):
        build_candidate_sets(topics, qrels)


@pytest.mark.parametrize("column", ["qid", "query"])
def test_build_candidate_sets_missing_column(res, qrels, column):
    with pytest.raises(ValueError, match=f"missing \\['{column}'\\]"):
        build_candidate_sets(res.drop(columns=column), qrels)


def test_build_candidate_sets_qrels_missing_column(res, qrels):
    with pytest.raises(ValueError, match=r"qrels must have columns.*missing \['label'\]"):
        build_candidate_sets(res, qrels.drop(columns="label"))


def test_build_candidate_sets_converts_integer_ids_with_warning():
    res = pd.DataFrame({"qid": [1, 1], "query": ["a", "a"], "docno": [10, 11], "text": ["x", "y"]})
    qrels = pd.DataFrame({"qid": ["1"], "docno": [11], "label": [1]})
    with pytest.warns(UserWarning, match="non-string values") as record:
        sets = build_candidate_sets(res, qrels)
    assert any("column 'qid'" in str(w.message) for w in record)
    assert sum("column 'docno'" in str(w.message) for w in record) == 2  # in the frame and in the qrels
    assert sets[0].qid == "1" and sets[0].docnos == ["10", "11"] and sets[0].labels.tolist() == [0.0, 1.0]


def test_build_candidate_sets_duplicate_docnos_raise(res, qrels):
    doubled = pd.concat([res, res.iloc[[1]]])
    with pytest.raises(ValueError, match=r"1 duplicate \(qid, docno\) rows, e.g. qid='q1' docno='d2'"):
        build_candidate_sets(doubled, qrels)


def test_build_candidate_sets_qrels_matching_nothing_raise(res):
    qrels = pd.DataFrame({"qid": ["Q1"], "docno": ["D1"], "label": [1]})
    with pytest.raises(ValueError, match="qrels match no candidate"):
        build_candidate_sets(res, qrels)


def test_build_candidate_sets_empty_frame_raise(res, qrels):
    with pytest.raises(ValueError, match="is empty"):
        build_candidate_sets(res.iloc[:0], qrels)


def test_build_candidate_sets_no_relevant_anywhere_raise(res, qrels):
    with pytest.raises(ValueError, match="no query is left"), pytest.warns(UserWarning, match="dropped 3 of 3"):
        build_candidate_sets(res, qrels.assign(label=0))


def test_build_candidate_sets_nan_label_raise(res, qrels):
    with pytest.raises(ValueError, match="NaN label"):
        build_candidate_sets(res, qrels.assign(label=[2, 0, None, 1, 0, 1]))


def test_build_candidate_sets_nan_score_and_text_warn(res, qrels):
    res = res.assign(score=[float("nan")] + [1.0] * 5, text=[None] + ["t"] * 5)
    with pytest.warns(UserWarning) as record:
        sets = build_candidate_sets(res, qrels, drop_unlearnable=False)
    messages = " ".join(str(w.message) for w in record)
    assert "1 rows have a NaN score" in messages and "1 rows have no text" in messages
    assert sets[0].texts[0] == ""


def test_build_candidate_sets_rows_without_docno_dropped(res, qrels):
    res = res.assign(docno=[None, "d2", "d3", "d4", "d1", "d5"])
    with pytest.warns(UserWarning, match="dropped 1 rows without a docno"):
        sets = build_candidate_sets(res, qrels, drop_unlearnable=False)
    assert sets[0].docnos == ["d2", "d3"]


def test_collate_pads_and_select_trims(res, qrels):
    sets = build_candidate_sets(res, qrels, drop_unlearnable=False)
    batch = collate(sets)
    assert batch.labels.shape == (3, 3) and batch.mask.tolist() == [[True] * 3, [True, True, False],
                                                                   [True, False, False]]
    assert batch.labels[0].tolist() == [0.0, 2.0, 0.0] and batch.n_relevant.tolist() == [2.0, 1.0, 0.0]
    assert collate(sets, width=5).labels.shape == (3, 5)
    with pytest.raises(ValueError, match="at least the longest"):
        collate(sets, width=2)
    picked = batch.select([2, 1])
    assert picked.qids == ["q3", "q2"] and picked.labels.shape == (2, 2)
    assert torch.equal(picked.mask, torch.tensor([[True, False], [True, True]]))
    assert picked.texts == [["v"], ["u", "x"]] and picked.to("cpu").n_relevant.tolist() == [0.0, 1.0]


def test_build_candidate_sets_logs_queries_without_candidates(res, qrels, caplog):
    with caplog.at_level("WARNING", logger="pyterrier_pgrank.data"):
        build_candidate_sets(res, qrels, drop_unlearnable=False)
    assert "1 of the 4 queries in the qrels have no candidates" in caplog.text  # q4
