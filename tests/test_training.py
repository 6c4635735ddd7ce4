"""Tests of the shared trainer (pyterrier_pgrank.training) with a tiny pure-torch ranker."""
from __future__ import annotations

import json

import ir_measures
import pandas as pd
import pyterrier as pt
import pytest
import torch
from pgrank_toy import BagOfWordsRanker, toy_task

from pyterrier_pgrank import checkpoint
from pyterrier_pgrank.settings import TrainingSettings


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors run far faster on one thread when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def task():
    return toy_task(n_words=8)


def _heldout_ndcg(model, res, qrels) -> float:
    run = model.transform(res)
    measure = ir_measures.parse_measure("nDCG@10")
    return ir_measures.calc_aggregate([measure], qrels.rename(columns={"qid": "query_id", "docno": "doc_id",
                                                                      "label": "relevance"}),
                                      run.rename(columns={"qid": "query_id", "docno": "doc_id"}))[measure]


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.net.state_dict().items()}


def test_fit_raises_heldout_ndcg(task):
    words, (train, train_qrels), (test, test_qrels) = task
    model = BagOfWordsRanker(words, lr=0.3, queries_per_step=8, epochs=5, warmup=0.0)
    before = _heldout_ndcg(model, test, test_qrels)
    model.net.eval()
    model.fit(train, train_qrels)
    assert not model.net.training  # left in the mode it was in
    after = _heldout_ndcg(model, test, test_qrels)
    assert after > before + 0.15, (before, after)
    assert model.prepared == 1 and len(model.training_history.train) == 3  # 25 steps, a log line every 10


def test_fit_in_pipeline_trains_on_first_stage_output(task):
    words, (train, train_qrels), (valid, valid_qrels) = task
    both = pd.concat([train, valid])
    first_stage = pt.apply.generic(lambda topics: topics[["qid"]].merge(both, on="qid"))
    topics = train[["qid", "query"]].drop_duplicates()
    valid_topics = valid[["qid", "query"]].drop_duplicates()
    model = BagOfWordsRanker(words, lr=0.3, max_steps=3, eval_every=3, queries_per_step=4, precision="bf16")
    (first_stage >> model).fit(topics, train_qrels, valid_topics, valid_qrels)
    assert [r["step"] for r in model.training_history.valid] == [0, 3]
    with pytest.raises(ValueError, match="no candidate documents"):
        model.fit(topics, train_qrels)


def test_resume_reaches_same_model_as_uninterrupted_run(task, tmp_path):
    words, (train, train_qrels), (valid, valid_qrels) = task
    settings = dict(lr=0.3, queries_per_step=8, max_steps=6, eval_every=3, checkpoint_every=2, warmup=2)
    straight = BagOfWordsRanker(words, checkpoint_dir=str(tmp_path / "a"), **settings)
    straight.fit(train, train_qrels, valid, valid_qrels)

    # kill a run during its 5th step (after the checkpoint of step 4), then resume it
    killed = BagOfWordsRanker(words, checkpoint_dir=str(tmp_path / "b"), **settings)
    calls = {"n": 0}
    original = killed._pgrank_backward

    def dies_at_step_5(batch, doc_weights):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        original(batch, doc_weights)

    killed._pgrank_backward = dies_at_step_5
    with pytest.raises(KeyboardInterrupt):
        killed.fit(train, train_qrels, valid, valid_qrels)
    assert (tmp_path / "b" / "latest").read_text() == "step-00000004"
    resumed = BagOfWordsRanker(words, checkpoint_dir=str(tmp_path / "b"), resume=True, **settings)
    resumed.fit(train, train_qrels, valid, valid_qrels)

    for name, value in _params(straight).items():
        torch.testing.assert_close(_params(resumed)[name], value, rtol=0, atol=0)
    last = {d: checkpoint.load_file(tmp_path / d / "step-00000006" / "model.safetensors") for d in "ab"}
    for name in last["a"]:
        torch.testing.assert_close(last["b"][name], last["a"][name], rtol=0, atol=0)
    assert resumed.training_history.to_dict() == straight.training_history.to_dict()

    # the history is on disk as JSON, with a plot
    saved = json.loads((tmp_path / "a" / "history.json").read_text())
    assert saved["measure"] == "nDCG@10" and [r["step"] for r in saved["valid"]] == [0, 3, 6]
    assert (tmp_path / "a" / "learning_curve.png").stat().st_size > 0


def test_early_stopping_keeps_the_best_weights(task):
    words, (train, train_qrels), (valid, valid_qrels) = task
    # every validation candidate relevant: the score is 1 from the start and can never improve
    model = BagOfWordsRanker(words, lr=0.3, max_steps=10, eval_every=1, patience=2, queries_per_step=4)
    initial = _params(model)
    model.fit(train, train_qrels, valid, valid_qrels.assign(label=1).merge(valid[["qid", "docno"]], how="right")
              .fillna({"label": 1}))
    history = model.training_history
    assert [r["step"] for r in history.valid] == [0, 1, 2] and history.stopped_early
    assert history.best_step == 0 and history.best_score == pytest.approx(1.0)
    for name, value in _params(model).items():
        assert torch.equal(value, initial[name])


def test_checkpoint_write_interrupted_keeps_previous(task, tmp_path, monkeypatch):
    words = task[0]
    model = BagOfWordsRanker(words)
    checkpoint.save_checkpoint(tmp_path, 2, model.net, {"step": 2})
    saved = _params(model)
    with torch.no_grad():
        model.net["query"].weight.add_(1.0)

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_checkpoint(tmp_path, 4, model.net, {"step": 4})
    monkeypatch.undo()

    assert (tmp_path / "latest").read_text() == "step-00000002"
    assert checkpoint.load_checkpoint(tmp_path, model.net) == {"step": 2}
    for name, value in _params(model).items():
        assert torch.equal(value, saved[name])
    checkpoint.save_checkpoint(tmp_path, 4, model.net, {"step": 4})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000004"]


def test_nan_scores_stop_training(task):
    words, (train, train_qrels), _ = task
    model = BagOfWordsRanker(words, max_steps=2, log_every=1)
    model._pgrank_scores = lambda batch: torch.full(batch.mask.shape, float("nan"))
    with pytest.raises((FloatingPointError, ValueError), match="(?i)nan"):
        model.fit(train, train_qrels)


def test_fit_rejects_bad_settings(task):
    words, (train, train_qrels), (valid, _) = task
    model = BagOfWordsRanker(words)
    with pytest.raises(ValueError, match="unknown training settings \\['learning_rate'\\]"):
        model.fit(train, train_qrels, learning_rate=0.1)
    with pytest.raises(ValueError, match="no valid_qrels"):
        model.fit(train, train_qrels, valid)
    with pytest.raises(ValueError, match="resume=True needs a checkpoint_dir"):
        model.fit(train, train_qrels, resume=True)
    with pytest.raises(ValueError, match="queries_per_step must be a positive integer, got 0"):
        model.fit(train, train_qrels, queries_per_step=0)


def test_lr_schedule_warms_up_then_decays_to_zero():
    settings = TrainingSettings(lr=1.0, warmup=2)
    # warm-up over steps 0, 1 (1/3, 2/3), then linear decay over the remaining 8 - 2 steps
    expected = [1 / 3, 2 / 3, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6]
    assert [settings.lr_at(step, 8) for step in range(8)] == pytest.approx(expected)
    assert TrainingSettings(lr=1.0, warmup=0.25).lr_at(1, 8) == pytest.approx(2 / 3)
    assert TrainingSettings(epochs=3, queries_per_step=4).total_steps(10) == 9


def test_check_backward_accepts_consistent_hooks_and_catches_a_skipped_chunk(task):
    from pyterrier_pgrank.data import build_candidate_sets, collate
    from pyterrier_pgrank.testing import check_backward

    words, (train, train_qrels), _ = task
    batch = collate(build_candidate_sets(train, train_qrels)[:3])
    model = BagOfWordsRanker(words, chunk_size=5)
    hook, finite_difference = check_backward(model, batch)
    assert hook == pytest.approx(finite_difference, rel=1e-3)

    # a backward that forgets the last chunk of candidates is caught
    model.chunk_size = 4
    original = model._score
    model._score = lambda queries, texts, columns: original(queries, texts, columns) * (columns.start < 8)
    model._pgrank_scores = lambda batch: original(batch.queries, batch.texts, slice(0, batch.mask.shape[1])).detach()
    hook, finite_difference = check_backward(model, batch)
    assert abs(hook - finite_difference) > 0.1 * abs(finite_difference), (hook, finite_difference)
