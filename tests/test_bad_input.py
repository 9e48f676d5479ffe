"""Bad input: one line naming the problem, a distinct exit code, nothing left behind that looks like a result."""

from __future__ import annotations

import json
import re
import os

import pytest
from omegaconf import OmegaConf

CONFIG, DATA, MODEL = 2, 3, 4


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory, tiny_model_dir, glue_dir):
    root = tmp_path_factory.mktemp("bad")
    only_train = root / "only-train"
    (only_train / "RTE").mkdir(parents=True)
    (only_train / "RTE" / "train.tsv").write_text((glue_dir / "RTE" / "train.tsv").read_text())
    wrong_columns = root / "wrong-columns"
    wrong_columns.mkdir()
    for split in ("train", "validation"):
        (wrong_columns / f"{split}.csv").write_text("text,label\nhello,0\n")
    rte_as_mrpc = root / "rte-as-mrpc"
    (rte_as_mrpc / "MRPC").mkdir(parents=True)
    for stem in ("train", "dev"):
        (rte_as_mrpc / "MRPC" / f"{stem}.tsv").write_text((glue_dir / "RTE" / f"{stem}.tsv").read_text())
    no_config = root / "no-config"
    no_config.mkdir()
    (no_config / "weights.bin").write_text("x")
    bloom = root / "bloom"  # a family runner/arch does not describe
    from transformers import BloomConfig, BloomModel

    BloomModel(BloomConfig(n_layer=1, n_head=2, hidden_size=8, vocab_size=50)).save_pretrained(bloom)
    empty_run = root / "empty-run"
    empty_run.mkdir()
    done_run = root / "done-run"
    done_run.mkdir()
    (done_run / "results.json").write_text(json.dumps({"status": "completed"}))
    truncated = root / "truncated-weights"
    import shutil

    shutil.copytree(tiny_model_dir, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    no_tokenizer = root / "no-tokenizer"  # config and weights only
    shutil.copytree(tiny_model_dir, no_tokenizer)
    for f in no_tokenizer.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            f.unlink()
    bad_labels = root / "bad-labels"
    bad_labels.mkdir()
    for split in ("train", "validation"):
        (bad_labels / f"{split}.csv").write_text("sentence1,sentence2,label\na cat,a dog,0\nthe sun,the moon,7\n")
    return {"truncated": truncated, "bad_labels": bad_labels, "only_train": only_train, "wrong_columns": wrong_columns, "rte_as_mrpc": rte_as_mrpc, "no_config": no_config,
            "bloom": bloom, "no_tokenizer": no_tokenizer, "empty_run": empty_run, "done_run": done_run, "tiny": tiny_model_dir}


# (id, overrides, extra environment, exit code, message pattern)
CASES = [
    ("unknown-task", ["task=glue/foo"], {}, CONFIG, r"unknown task 'glue/foo'; valid: glue/cola, .*glue/wnli"),
    ("unknown-model", ["model=gpt5"], {}, CONFIG, r"unknown model 'gpt5'; valid: .*minilm"),
    ("unknown-adapter", ["adapter=prefix"], {}, CONFIG, r"unknown adapter 'prefix'; valid: bottleneck, lora"),
    ("unknown-method", ["method=magic"], {}, CONFIG, r"unknown method 'magic'; valid: adapter, full"),
    ("unknown-logger", ["logger=mlflow"], {}, CONFIG, r"unknown logger 'mlflow'"),
    ("unknown-criterion", ["prune=foo"], {}, CONFIG, r"unknown prune 'foo'"),
    ("unknown-experiment", ["experiment=paper"], {}, CONFIG, r"unknown experiment 'paper'; valid: .*demo"),
    ("unknown-key", ["trainer.bsz=3"], {}, CONFIG, r"^error: trainer.bsz is not a setting; valid: epochs, max_steps, batch_size"),
    ("bad-override-syntax", ["trainer.lr=[1,"], {}, CONFIG, r"invalid override"),
    ("zero-batch", ["trainer.batch_size=0"], {}, CONFIG, r"trainer.batch_size must be a positive integer, got 0"),
    ("negative-batch", ["trainer.batch_size=-4"], {}, CONFIG, r"trainer.batch_size must be a positive integer, got -4"),
    ("zero-lr", ["trainer.lr=0"], {}, CONFIG, r"trainer.lr must be a positive number"),
    ("negative-lr", ["trainer.lr=-1e-3"], {}, CONFIG, r"trainer.lr must be a positive number"),
    ("zero-epochs", ["trainer.epochs=0"], {}, CONFIG, r"trainer.epochs must be a positive integer"),
    ("negative-max-steps", ["trainer.max_steps=-1"], {}, CONFIG, r"trainer.max_steps must be a positive integer"),
    ("lora-rank-zero", ["adapter.r=0"], {}, CONFIG, r"adapter.r \(LoRA rank\) must be a positive integer, got 0"),
    ("lora-dropout", ["adapter.dropout=1.5"], {}, CONFIG, r"adapter.dropout must be in \[0, 1\)"),
    ("mixed-precision", ["trainer.mixed_precision=fp8"], {}, CONFIG, r"trainer.mixed_precision must be one of no, fp16, bf16"),
    ("warmup", ["trainer.warmup_ratio=1.5"], {}, CONFIG, r"trainer.warmup_ratio must be in \[0, 1\)"),
    ("schedule", ["trainer.lr_schedule=exponential"], {}, CONFIG, r"trainer.lr_schedule must be one of"),
    ("train-cap", ["task.max_train_samples=0"], {}, CONFIG, r"task.max_train_samples must be a positive integer"),
    ("holdout", ["task.holdout_samples=-5"], {}, CONFIG, r"task.holdout_samples \(training examples kept out of fine-tuning\) must be 0 or a positive integer"),
    ("seed", ["seed=abc"], {}, CONFIG, r"seed must be an integer"),
    ("wandb-mode", ["logger.mode=sometimes"], {}, CONFIG, r"logger.mode must be one of auto, online, offline, disabled"),
    ("adapter-method-without-adapter", ["method=adapter", "adapter=none"], {}, CONFIG,
     r"method=adapter trains adapters but adapter=none"),
    ("lora-targets-match-nothing", ["adapter.target_modules=[nonexistent]", "model.name_or_path={tiny}"], {}, CONFIG,
     r"adapter.target_modules \['nonexistent'\] name no module of this bert model; use adapter.target_modules=auto"),
    ("bottleneck-targets-match-nothing", ["adapter=bottleneck", "adapter.target_modules=[foo.bar]", "model.name_or_path={tiny}"],
     {}, CONFIG, r"adapter.target_modules \['foo.bar'\] name no module of this bert model"),
    ("resume-without-checkpoint", ["resume=true", "hydra.run.dir={empty_run}"], {}, CONFIG, r"resume=true but .* holds no checkpoint"),
    ("never-overwrite", ["hydra.run.dir={done_run}"], {}, CONFIG, r"already holds a run|holds a completed run"),
    ("safe-schedule-order", ["method=safe", "safe.t_w=0.5", "safe.t_f=0.2"], {}, CONFIG, r"need 0 <= safe.t_w < safe.t_f <= 1"),
    ("safe-epoch-window", ["method=safe", "safe.schedule_unit=epoch", "safe.t_w=0.5", "safe.t_f=5"], {}, CONFIG,
     r"safe.schedule_unit=epoch needs 0 <= safe.t_w < safe.t_f <= 3 \(the run's epochs\), got t_w=0.5, t_f=5 epochs$"),
    ("safe-threshold", ["method=safe", "safe.threshold=1.5"], {}, CONFIG, r"safe.threshold \(T_final\) must be in \[0, 1\], got 1.5"),
    ("safe-without-method-safe", ["safe.policy=static"], {}, CONFIG, r"safe.policy is one of SAFE's settings: add method=safe$"),
    ("freeze-moved", ["method=safe", "freeze=static"], {}, CONFIG,
     r"freeze= is now a SAFE setting: method=safe safe.policy=static \(safe, random, static or none\)$"),
    ("safe-under-fsdp", ["method=safe"], {"ACCELERATE_USE_FSDP": "true"}, CONFIG,
     r"method=safe freezes adapters during the run, which FSDP does not support here; launch with DDP"),
    ("safe-under-deepspeed", ["method=safe"], {"ACCELERATE_USE_DEEPSPEED": "true"}, CONFIG,
     r"method=safe freezes adapters during the run, which DeepSpeed does not support here"),
    ("safe-interval", ["method=safe", "safe.interval=0"], {}, CONFIG, r"safe.interval \(steps between importance measurements\) must be a positive integer, got 0"),
    ("prune-ratio-one", ["prune=hies", "prune.ratio=1.0"], {}, CONFIG, r"ratio"),
    ("prune-ratio-negative", ["prune=hies", "prune.ratios=[0.1,-0.2]"], {}, CONFIG, r"ratio"),
    ("prune-alpha", ["prune=hies", "prune.alpha=1.5"], {}, CONFIG, r"alpha"),
    ("prune-from-run-without-criterion", ["prune.from_run=/tmp"], {}, CONFIG, r"prune.from_run needs a criterion"),
    ("misspelled-key", ["trainer.lrr=1e-3"], {}, CONFIG, r"^error: trainer.lrr is not a setting; did you mean trainer.lr\?$"),
    ("appended-unknown-key", ["+trainer.lrr=1e-3"], {}, CONFIG, r"^error: trainer.lrr is not a setting; did you mean trainer.lr\?$"),
    ("float-epochs", ["trainer.epochs=1.5"], {}, CONFIG, r"trainer.epochs must be a positive integer, got 1.5"),
    ("lr-inf", ["trainer.lr=inf"], {}, CONFIG, r"trainer.lr must be a positive number, got inf"),
    ("grad-norm-nan", ["trainer.max_grad_norm=nan"], {}, CONFIG, r"trainer.max_grad_norm must be a finite number >= 0"),
    ("seq-len-too-short", ["trainer.max_seq_length=1", "model.name_or_path={tiny}"], {}, CONFIG,
     r"trainer.max_seq_length=1 leaves no room for the text: the tokenizer adds 3 special tokens; use at least 5"),
    ("seq-len-beyond-positions", ["trainer.max_seq_length=100000", "model.name_or_path={tiny}"], {}, CONFIG,
     r"trainer.max_seq_length=100000 exceeds the model's 512 positions"),
    ("truncated-weights", ["model.name_or_path={truncated}"], {}, MODEL, r"cannot read the weights of model .*damaged or incomplete"),
    ("label-not-of-the-task", ["task=glue/rte", "task.data_dir={bad_labels}"], {}, DATA,
     r"label 7 is not a label of task rte \(valid: 0..1 or entailment, not_entailment\)"),
    ("glue-dir-missing", [], {"GLUE_DIR": "/nonexistent/glue"}, DATA, r"data dir /nonexistent/glue does not exist"),
    ("split-file-missing", ["task=glue/rte", "task.data_dir={only_train}"], {}, DATA, r"has no dev.tsv"),
    ("wrong-columns", ["task=glue/rte", "task.data_dir={wrong_columns}"], {}, DATA, r"lacks column\(s\) sentence1, sentence2"),
    ("wrong-task-files", ["task=glue/mrpc", "task.data_dir={rte_as_mrpc}"], {}, DATA, r"has 4 columns .* expects at least 5"),
    ("model-path-missing", ["model.name_or_path=/does/not/exist"], {}, MODEL, r"model path /does/not/exist does not exist"),
    ("model-folder-without-config", ["model.name_or_path={no_config}"], {}, MODEL, r"has no config.json"),
    ("model-without-tokenizer", ["model.name_or_path={no_tokenizer}"], {}, MODEL,
     r"model folder .*no-tokenizer has no tokenizer files \(tokenizer.json, tokenizer_config.json, vocab.txt, ...\); copy"),
    ("unsupported-architecture", ["model.name_or_path={bloom}"], {}, MODEL, r"model type bloom is not supported; supported: .*llama"),
    ("config-override-without-plus", ["model.config_overrides.hidden_dropout_prob=0"], {}, CONFIG,
     r"^error: model.config_overrides takes entries of your own: add them with a leading \+, e.g. \+model.config_overrides.NAME=VALUE$"),
    ("config-override-typo", ["+model.config_overrides.hidden_dropot_prob=0", "model.name_or_path={tiny}"], {}, MODEL,
     r"model.config_overrides.hidden_dropot_prob: bert's config has no attribute hidden_dropot_prob; did you mean hidden_dropout_prob"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_in_one_line(case, fixtures, glue_dir, tmp_path, runner_processes):
    _, overrides, extra_env, code, pattern = case
    overrides = [o.format(**fixtures) for o in overrides]
    env = {**os.environ, "GLUE_DIR": str(glue_dir), "HOME": str(tmp_path), "WANDB_MODE": "offline", **extra_env}
    args = [*overrides, "trainer.progress_bar=false", f"data_cache_dir={tmp_path / 'cache'}"]
    proc = runner_processes.run(args, cwd=tmp_path, env=env, timeout=180)  # a real process (forked after the imports)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert re.search(pattern, errors[0]), errors[0]
    # nothing that looks like a result: no run dir under outputs/, no new results.json anywhere
    runs = tmp_path / "outputs" / "runs"
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())
    for results in list(tmp_path.rglob("results.json")) + list(fixtures["empty_run"].rglob("results.json")):
        assert json.loads(results.read_text()).get("status") != "completed"
    assert json.loads((fixtures["done_run"] / "results.json").read_text()) == {"status": "completed"}


def test_skipped_and_capped_rows_are_counted_in_the_record_and_the_summary(tiny_overrides, tiny_model_dir, glue_dir,
                                                                            tmp_path, runner_processes):
    """Nothing dropped without a count (issue 38, rule 4): malformed GLUE rows (up to 1% are skipped, as QQP's
    train file needs), the max_*_samples cap and non-finite regression labels, through the real command line."""
    from transformers import AutoTokenizer

    from runner.data import label_to_id

    glue = tmp_path / "glue"
    (glue / "MRPC").mkdir(parents=True)
    for f in (glue_dir / "MRPC").iterdir():
        (glue / "MRPC" / f.name).write_bytes(f.read_bytes())
    train = (glue / "MRPC" / "train.tsv").read_text().splitlines()
    train[5] = "oops\tonly two columns"  # too few columns
    train[9] = "\t".join(["x", *train[9].split("\t")[1:]])  # a label that is no label
    train[12] = train[12] + "\tand a tab inside the second sentence"  # read by position, it would shift
    (glue / "MRPC" / "train.tsv").write_text("\n".join(train) + "\n")
    out = tmp_path / "run"
    overrides = [o for o in tiny_overrides if not o.startswith(("task.data_dir", "task.max_train_samples"))]
    proc = runner_processes.run([*overrides, f"task.data_dir={glue}", "trainer.max_steps=1", "task.max_train_samples=100",
                                 f"hydra.run.dir={out}"], cwd=tmp_path, env={**os.environ, "HOME": str(tmp_path)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((out / "results.json").read_text())["data"]["input"]
    rows = len(train) - 1
    used = [line.split("\t") for i, line in enumerate(train) if i not in (0, 5, 9, 12)][:100]
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    cut = sum(len(tokenizer(r[3], r[4])["input_ids"]) > 64 for r in used)  # trainer.max_seq_length=64
    assert cut > 0 and record["train"] == {"file": str(glue / "MRPC" / "train.tsv"), "read": rows, "skipped": 3,
                                           "used": 100, "truncated": cut}
    assert record["validation"]["skipped"] == 0 and record["validation"]["used"] == 32
    cut_dev = record["validation"]["truncated"]
    assert (f"data: train: 3 malformed row(s) skipped, 100 of {rows - 3} rows used (max_*_samples), {cut} example(s) "
            f"cut at max_seq_length; validation: 32 of {record['validation']['read']} rows used (max_*_samples)"
            + (f", {cut_dev} example(s) cut at max_seq_length" if cut_dev else "") + " (results.json data.input)") in proc.stderr

    stsb = OmegaConf.create({"is_regression": True, "label_names": []})
    assert label_to_id("3.5", stsb) == 3.5
    for bad in ("nan", "inf", "-inf"):
        with pytest.raises(ValueError, match="not a finite number"):
            label_to_id(bad, stsb)
