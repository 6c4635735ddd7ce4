"""Markdown tables of benchmark results, for BENCHMARKS.md."""
from __future__ import annotations

import math

import pandas as pd


def experiment_markdown(table: pd.DataFrame, measures: list[str]) -> str:
    """A pt.Experiment frame as a Markdown table; ``*`` marks a significant difference from BM25 (Holm).

    A system whose per-query values all equal the baseline's has no p-value (NaN), and is not marked.
    """
    measures_ = [m for m in measures if m in table.columns]
    lines = ["| system | " + " | ".join(measures_) + " |", "|---" * (len(measures_) + 1) + "|"]
    for _, row in table.iterrows():
        cells = [f"{row[m]:.4f}" + ("*" if _significant(row.get(f"{m} p-value corrected")) else "") for m in measures_]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _significant(p_value) -> bool:
    return p_value is not None and math.isfinite(p_value) and p_value < 0.05


def efficiency_markdown(results: dict) -> str:
    """The measured sections of a results dictionary as Markdown tables."""
    out = []
    if "throughput" in results:
        out += ["| training step | s/step | queries/s | docs/s | time vs sentence-transformers | pg_loss share |",
                "|---" * 6 + "|"]
        for name, row in results["throughput"].items():
            share = f"{row['loss_s'] / row['step_s']:.2%}" if "loss_s" in row else "-"
            out.append(f"| {name} | {row['step_s']:.2f} | {row['queries_per_s']:.3f} | {row['docs_per_s']:.2f} | "
                       f"{row['step_time_vs_st']:.2f}x | {share} |")
        out.append("")
    if "share" in results:
        out += ["| towers | estimator | N | S | s/step | pg_loss (ms) | pg_loss share | encoder share |",
                "|---" * 8 + "|"]
        for row in results["share"]:
            encoder = (row["scores_s"] + row["backward_s"]) / row["step_s"]
            out.append(f"| {row['towers']} | {row['estimator']} | {row['candidates']} | {row['samples']} | "
                       f"{row['step_s']:.2f} | {1000 * row['loss_s']:.0f} | {row['loss_s'] / row['step_s']:.2%} | "
                       f"{encoder:.0%} |")
        out.append("")
    if "memory" in results:
        out += ["| model | backward | N | peak MiB | above start MiB | s/step |", "|---" * 6 + "|"]
        for row in results["memory"]:
            out.append(f"| {row['kind']} | {row['method']} | {row['candidates']} | {row['peak_mb']:.0f} | "
                       f"{row['peak_above_start_mb']:.0f} | {row['step_s']:.1f} |")
        out.append("")
    if "rerank" in results:
        out += ["| re-ranker | pairs | seconds | pairs/s |", "|---" * 4 + "|"]
        for name, row in results["rerank"].items():
            out.append(f"| {name} | {row['pairs']} | {row['seconds']:.1f} | {row['pairs_per_s']:.1f} |")
    return "\n".join(out)
