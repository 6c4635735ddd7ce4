"""Tests of training across processes: 2 CPU processes with gloo against one process with the same global batch."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from pgrank_toy import BagOfWordsRanker, toy_task
from safetensors.torch import load_file, save_file

from pyterrier_pgrank.distributed import Distributed, init_distributed
from pyterrier_pgrank.training import Trainer

# 11 training queries in batches of 5, 5, 1, 5: queries split 3 + 2 between the processes, and in step 2 one
# process has none; validation on rank 0, checkpoints every 2 steps
SETTINGS = dict(lr=0.3, queries_per_step=5, max_steps=4, eval_every=2, checkpoint_every=2, warmup=1)
N_TRAIN = 11


def _ranker(words, **settings) -> BagOfWordsRanker:
    """The toy ranker plus a parameter that never gets a gradient (the optimizer must leave it alone)."""
    model = BagOfWordsRanker(words, **settings)
    model.net["unused"] = torch.nn.Linear(2, 2)
    return model


def _dies_at_step_2(original):
    def train_step(self, batch, step):
        if step == 2:
            raise KeyboardInterrupt
        return original(self, batch, step)
    return train_step


def _worker(rank: int, world_size: int, port: int, folder: str) -> None:
    """One process of a ``torchrun``-like launch: a straight run, then a run killed during step 2 (0-based)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    words, (train, train_qrels), (valid, valid_qrels) = toy_task(n_train=N_TRAIN, n_words=8)
    model = _ranker(words, checkpoint_dir=f"{folder}/straight", **SETTINGS)
    model.fit(train, train_qrels, valid, valid_qrels)
    save_file(model.net.state_dict(), f"{folder}/rank{rank}.safetensors")

    killed = _ranker(words, checkpoint_dir=f"{folder}/killed", **SETTINGS)
    Trainer._train_step = _dies_at_step_2(Trainer._train_step)  # every process stops at the same step
    try:
        killed.fit(train, train_qrels, valid, valid_qrels)
    except KeyboardInterrupt:
        pass
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_and_resume_on_one(tmp_path):
    # forked processes inherit the imported modules, which spares each one a slow import of torch and PyTerrier
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    torch.set_num_threads(1)
    words, (train, train_qrels), (valid, valid_qrels) = toy_task(n_train=N_TRAIN, n_words=8)
    single = _ranker(words, checkpoint_dir=str(tmp_path / "single"), **SETTINGS)
    single.fit(train, train_qrels, valid, valid_qrels)
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    for name, value in single.net.state_dict().items():
        assert torch.equal(ranks[0][name], ranks[1][name])
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-5, atol=1e-6)
        trained = not torch.equal(value, _ranker(words).net.state_dict()[name])
        assert trained == (not name.startswith("unused"))

    # the 2-process run killed during step 2 resumes in one process and reaches the same model
    assert (tmp_path / "killed" / "latest").read_text() == "step-00000002"
    resumed = _ranker(words, checkpoint_dir=str(tmp_path / "killed"), resume=True, **SETTINGS)
    resumed.fit(train, train_qrels, valid, valid_qrels)
    for name, value in single.net.state_dict().items():
        torch.testing.assert_close(resumed.net.state_dict()[name], value, rtol=1e-5, atol=1e-6)
    assert [r["step"] for r in resumed.training_history.valid] == [0, 2, 4]


def test_shard_covers_the_batch_in_order():
    for n_queries in (2, 5, 8):
        rows = [list(Distributed(r, 3).shard(n_queries)) for r in range(3)]
        assert sum(rows, []) == list(range(n_queries))
        assert max(map(len, rows)) - min(map(len, rows)) <= 1


def test_misconfigured_launch_raises(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(RuntimeError, match=r"MASTER_ADDR.*are missing.*torchrun --nproc_per_node"):
        init_distributed(torch.device("cpu"))
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(RuntimeError, match="torchrun"):
        init_distributed(torch.device("cpu"), mode="on")
    assert init_distributed(torch.device("cpu")).world_size == 1
    with pytest.raises(ValueError, match="'auto', 'on' or 'off'"):
        init_distributed(torch.device("cpu"), mode="yes")
