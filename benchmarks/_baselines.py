"""Training of the systems compared in ``effectiveness.py``: PG-Rank models and the contrastive baseline.

Every trainer reads the same candidate frames (BM25's top ``--depth`` with text, on the training and dev
topics) and the same qrels, so the systems differ only in their objective and regime.
"""
from __future__ import annotations

import logging
import time

import pandas as pd

logger = logging.getLogger(__name__)


def _settings(args, **extra) -> dict:
    return {"n_samples": args.n_samples, "queries_per_step": args.queries_per_step, "epochs": args.epochs,
            "eval_every": args.eval_every, "patience": args.patience, "seed": args.seed,
            "max_steps": args.max_steps, **extra}


def train_pgrank_biencoder(args, system: str, data: dict, zero_shot_index) -> tuple[object, dict]:
    """Trains ``pg-<towers>-<estimator>[-rr10]`` once per learning rate; keeps the best on the dev split.

    In the query-tower regime the document cache is seeded from the zero-shot index of the corpus, whose
    vectors are what the frozen document tower computes, so no candidate is encoded again.

    Returns:
        The chosen model and a record of every run (learning rate, best dev score and step, seconds).
    """
    from pyterrier_pgrank import PGRankBiEncoder

    _, towers, estimator, *rest = system.split("-")
    utility = "RR@10" if rest == ["rr10"] else "nDCG@10"
    train, dev = data["train"], data["dev"]
    if towers == "both":  # every candidate is re-encoded twice per step: a smaller candidate set per query
        train, dev = train[train["rank"] < args.both_depth], dev[dev["rank"] < args.both_depth]
    runs, best = [], None
    for lr in args.lrs:
        options = {"temperature": args.temperature} if args.temperature else {}
        model = PGRankBiEncoder.from_pretrained(args.model, train_towers=towers, max_length=args.max_length,
                                                batch_size=args.batch_size, doc_chunk_size=args.batch_size, **options)
        if towers == "query":
            model.cache_doc_vectors(zero_shot_index)
        start = time.perf_counter()
        model.fit(train, data["qrels"], dev, data["qrels"],
                  **_settings(args, utility=utility, estimator=estimator, lr=lr))
        history = model.training_history
        runs.append({"lr": lr, "dev_score": history.best_score, "best_step": history.best_step,
                     "dev_curve": history.valid, "seconds": time.perf_counter() - start})
        logger.info("%s lr=%g: dev %s=%.4f at step %s", system, lr, utility, history.best_score, history.best_step)
        if best is None or history.best_score > best[1]:
            best = (model, history.best_score, runs[-1])
    return best[0], {"utility": utility, "chosen": {k: v for k, v in best[2].items() if k != "dev_curve"},
                     "runs": runs}


def mnrl_examples(res: pd.DataFrame, qrels: pd.DataFrame, n_negatives: int) -> list:
    """One ``(query, relevant candidate, hard negatives...)`` example per relevant candidate of each query.

    The hard negatives are the query's best-ranked non-relevant BM25 candidates: the same candidate sets
    PG-Rank trains on, so both methods see the same documents.
    """
    from sentence_transformers import InputExample

    labels = qrels.set_index(["qid", "docno"])["label"].to_dict()
    examples = []
    for _, group in res.sort_values(["qid", "rank"]).groupby("qid", sort=False):
        relevant = [labels.get((group["qid"].iloc[0], d), 0) > 0 for d in group["docno"]]
        positives = group[relevant]
        negatives = group[[not r for r in relevant]]["text"].head(n_negatives).tolist()
        if len(negatives) < n_negatives:
            continue  # MNRL needs the same number of texts in every example of a batch
        for text in positives["text"]:
            examples.append(InputExample(texts=[group["query"].iloc[0], text, *negatives]))
    return examples


def train_mnrl(args, data: dict, lr: float) -> tuple[str, dict]:
    """sentence-transformers' own loop (``old_fit``) with ``MultipleNegativesRankingLoss``; returns the folder.

    In-batch negatives come from the other queries of the batch (a ``NoDuplicatesDataLoader`` keeps a text
    from appearing twice in one batch), and each example adds its BM25 hard negatives.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.datasets.no_duplicates_dataloader import NoDuplicatesDataLoader
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model = SentenceTransformer(args.model)
    model.max_seq_length = args.max_length
    examples = mnrl_examples(data["train"], data["qrels"], args.mnrl_negatives)
    loader = NoDuplicatesDataLoader(examples, batch_size=args.queries_per_step)
    steps = len(loader) * args.epochs
    start = time.perf_counter()
    model.old_fit(train_objectives=[(loader, MultipleNegativesRankingLoss(model))], epochs=args.epochs,
                  warmup_steps=int(0.1 * steps), optimizer_params={"lr": lr}, show_progress_bar=False)
    seconds = time.perf_counter() - start
    path = args.work / "models" / f"mnrl-lr{lr:g}"
    model.save(str(path))
    return str(path), {"examples": len(examples), "steps": steps, "lr": lr, "seconds": seconds}


def train_cross_encoder(args, system: str, data: dict) -> tuple[object, dict]:
    """``ce-pgrank`` (policy gradient) or ``ce-pointwise`` (binary cross-entropy) from the MiniLM body.

    Both train on BM25's top ``--ce-depth`` candidates for the same number of steps, with the same
    validation on the dev split (the best validated weights are kept).
    """
    from pyterrier_pgrank import PGRankCrossEncoder
    from pyterrier_pgrank.pointwise import fit_pointwise

    model = PGRankCrossEncoder.from_pretrained(args.model, max_length=args.max_length,
                                               batch_size=args.batch_size)
    train, dev = (frame[frame["rank"] < args.ce_depth] for frame in (data["train"], data["dev"]))
    settings = _settings(args, lr=args.ce_lr, estimator="plrank")
    start = time.perf_counter()
    if system == "ce-pgrank":
        model.fit(train, data["qrels"], dev, data["qrels"], **settings)
    else:
        fit_pointwise(model, train, data["qrels"], dev, data["qrels"], **settings)
    history = model.training_history
    return model, {"lr": args.ce_lr, "dev_score": history.best_score, "best_step": history.best_step,
                   "dev_curve": history.valid, "seconds": time.perf_counter() - start}
