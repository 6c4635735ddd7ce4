"""Markdown tables of benchmark results, for BENCHMARKS.md."""
from __future__ import annotations

import math

import pandas as pd


def system_label(system: str, model_label: str = "MiniLM") -> str:
    """A trained system's name in tables, e.g. ``MiniLM PG-Rank RR@10 (query tower, reinforce)``."""
    if system == "mnrl":
        return f"{model_label} MNRL"
    if system.startswith("ce-"):
        loss = "PG-Rank nDCG@10" if system == "ce-pgrank" else "pointwise BCE"
        return f"{model_label} cross-encoder, {loss}"
    _, towers, estimator, *rest = system.split("-")
    utility = "RR@10" if rest == ["rr10"] else "nDCG@10"
    regime = "query tower" if towers == "query" else "both towers"
    return f"{model_label} PG-Rank {utility} ({regime}, {estimator})"


def experiment_markdown(table: pd.DataFrame, measures: list[str]) -> str:
    """A pt.Experiment frame as a Markdown table; ``*`` marks a significant difference from BM25 (Holm).

    A system whose per-query values all equal the baseline's has no p-value (NaN), and is not marked.
    """
    measures_ = [m for m in measures if m in table.columns]
    lines = ["| system | " + " | ".join(measures_) + " |", "|---|" + "---:|" * len(measures_)]
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


def effectiveness_markdown(data: dict) -> str:
    """An ``effectiveness.py`` results file as Markdown: one table per collection, then the training costs.

    System names written by older runs as ``<model> <system key>`` are shown with their readable labels.
    """
    settings = data["settings"]
    label = settings.get("label", "MiniLM")
    renames = {f"{label} {system}": system_label(system, label)
               for system in settings["systems"] if system not in ("bm25", "zeroshot")}
    measures = ["nDCG@10", "RR@10", "R@100", "AP"]
    out = []
    for collection, rows in data.get("results", {}).items():
        table = pd.DataFrame(rows)
        for old, new in sorted(renames.items(), key=lambda item: -len(item[0])):  # longest key first
            table["name"] = table["name"].str.replace(old, new, regex=False)
        seconds = data.get("eval_seconds", {}).get(collection)
        out += [f"### {collection}" + (f" (evaluated in {seconds:.0f} s)" if seconds else ""), "",
                experiment_markdown(table, measures), ""]
    if data.get("training"):
        out += ["| system | learning rate (chosen on dev) | best dev score | at step | training s (chosen run) "
                "| training s (all learning rates, with selection) |", "|---|---:|---:|---:|---:|---:|"]
        for system, info in data["training"].items():
            chosen = info.get("chosen", info)
            score, step = chosen.get("dev_score"), chosen.get("best_step")
            seconds = chosen.get("seconds")
            out.append(f"| {system_label(system, label)} | {chosen.get('lr', '-'):g} | "
                       + (f"{score:.4f} | {'end' if step is None else step}" if score is not None else "- | -")
                       + (f" | {seconds:.0f}" if seconds is not None else " | -")
                       + f" | {data['train_seconds'][system]:.0f} |")
    return "\n".join(out)
