"""The Markdown tables that BENCHMARKS.md is written from, rendered from a small results dictionary."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _report as report  # noqa: E402


def _row(name: str, ndcg: float, p_corrected: float | None = None) -> dict:
    row = {"name": name, "nDCG@10": ndcg, "RR@10": ndcg / 2, "R@100": 0.9, "AP": ndcg / 3}
    if p_corrected is not None:
        row["nDCG@10 p-value corrected"] = p_corrected
    return row


def test_system_label_names_utility_regime_and_estimator():
    assert report.system_label("pg-query-reinforce-rr10") == "MiniLM PG-Rank RR@10 (query tower, reinforce)"
    assert report.system_label("pg-both-plrank", "E5") == "E5 PG-Rank nDCG@10 (both towers, plrank)"
    assert report.system_label("mnrl") == "MiniLM MNRL"
    assert report.system_label("ce-pointwise") == "MiniLM cross-encoder, pointwise BCE"


def test_effectiveness_markdown_relabels_old_names_and_marks_significance():
    data = {
        "settings": {"label": "MiniLM", "systems": ["bm25", "pg-query-reinforce", "pg-query-reinforce-rr10"]},
        "results": {"irds:x": [_row("BM25", 0.5),
                               _row("BM25 >> MiniLM pg-query-reinforce", 0.6, p_corrected=0.01),
                               _row("MiniLM pg-query-reinforce-rr10 dense", 0.55, p_corrected=0.2)]},
        "eval_seconds": {"irds:x": 12.0},
        "training": {"pg-query-reinforce": {"chosen": {"lr": 1e-4, "dev_score": 0.7, "best_step": 40}},
                     "pg-query-reinforce-rr10": {"chosen": {"lr": 2e-5, "dev_score": 0.65, "best_step": 20,
                                                              "seconds": 40.0}}},
        "train_seconds": {"pg-query-reinforce": 100.0, "pg-query-reinforce-rr10": 90.0},
    }
    text = report.effectiveness_markdown(data)
    assert "### irds:x (evaluated in 12 s)" in text
    assert "| BM25 >> MiniLM PG-Rank nDCG@10 (query tower, reinforce) | 0.6000* |" in text
    assert "| MiniLM PG-Rank RR@10 (query tower, reinforce) dense | 0.5500 |" in text
    assert "| MiniLM PG-Rank RR@10 (query tower, reinforce) | 2e-05 | 0.6500 | 20 | 40 | 90 |" in text
