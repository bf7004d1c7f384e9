"""fastbert.pretrain: exact resume, padded and packed batches, CSV and text corpora, the export, 2-process DDP on
gloo, and bad input (one-line error, exit code 2, nothing overwritten).

Runs use a tiny model (2 layers, hidden 64) on a small synthetic corpus, so the whole file takes well under a minute
on CPU; most runs call ``main(argv)`` in-process, the CLI and torchrun runs use subprocesses.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastbert import BertForPreTraining, BertForSequenceClassification
from fastbert.pretrain import main
from fastbert.training.checkpoint import CHECKPOINT_NAME, LOG_NAME, read_log
from helpers import CLI_TINY_CONFIG, make_documents, write_cli_inputs

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = CLI_TINY_CONFIG


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(text corpus path, tiny config.json path) shared by the file's tests."""
    return write_cli_inputs(tmp_path_factory.mktemp("corpus"))


def base_args(corpus, output, *extra):
    text, config = corpus
    return ["--data", str(text), "--config", str(config), "--vocab-size", "300", "--max-seq-len", "32",
            "--batch-size", "8", "--steps", "6", "--no-progress", "--output", str(output), *extra]


@pytest.fixture(scope="module")
def finished_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    assert main(base_args(corpus, out)) == 0
    return out


def losses(folder):
    return [(r["step"], r["epoch"], r["loss"], r["mlm_acc"]) for r in read_log(folder / LOG_NAME)]


@pytest.mark.parametrize("extra", [[], ["--packed", "--grad-accum", "2"]], ids=["padded", "packed-accum2"])
def test_resume_continues_exactly(corpus, finished_run, tmp_path, extra):
    """N steps straight == N/2 steps, stop, --resume: same per-step losses (bit for bit), same final weights. 12
    steps of batch 8 cross an epoch boundary, so the data position and epoch reshuffle are exercised too."""
    vocab = str(finished_run / "vocab.txt")  # one vocabulary for both runs
    common = ["--steps", "12", "--vocab", vocab, "--save-every", "4", *extra]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(base_args(corpus, straight, *common)) == 0
    assert main(base_args(corpus, resumed, *common, "--stop-after", "5")) == 0
    first = torch.load(resumed / CHECKPOINT_NAME, weights_only=True)
    assert first["position"]["step"] == 5
    assert main(base_args(corpus, resumed, *common, "--resume")) == 0

    a, b = losses(straight), losses(resumed)
    assert [s for s, *_ in a] == list(range(1, 13)) and a == b
    assert max(e for _, e, *_ in a) >= 1, "the run should cross an epoch boundary"
    ckpt = torch.load(resumed / CHECKPOINT_NAME, weights_only=True)
    assert ckpt["position"]["step"] == 12
    assert (straight / "model.safetensors").read_bytes() == (resumed / "model.safetensors").read_bytes()


def test_csv_corpus_export_loads(corpus, tmp_path):
    """A CSV text column with a trained vocabulary; the exported folder loads as pretraining and classifier models."""
    import csv

    data = tmp_path / "corpus.csv"
    with open(data, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "body"])
        writer.writerows(enumerate(make_documents(seed=1)))
    out = tmp_path / "out"
    args = base_args(corpus, out, "--steps", "3", "--packed")
    args[args.index("--data") + 1] = str(data)
    assert main([*args, "--text-column", "body"]) == 0
    for name in (CHECKPOINT_NAME, LOG_NAME, "config.json", "model.safetensors", "vocab.txt"):
        assert (out / name).is_file(), name
    vocab = (out / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    model = BertForPreTraining.from_pretrained(out)
    ckpt = torch.load(out / CHECKPOINT_NAME, weights_only=True)
    state = model.state_dict()
    for key, value in ckpt["model"].items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)
    assert model.config.vocab_size == len(vocab) and model.config.hidden_size == 64
    BertForSequenceClassification.from_pretrained(out, num_labels=3)
    assert len(losses(out)) == 3


def test_cli_subprocess_exit_code(tmp_path):
    """The real command line: a missing corpus is one line on stderr and exit code 2."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "fastbert.pretrain", "--data", str(tmp_path / "missing.csv"),
                           "--output", str(out)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.csv" in lines[0] and "no such file" in lines[0], proc.stderr
    assert not out.exists()


def test_ddp_two_processes_gloo(corpus, finished_run, tmp_path):
    """torchrun with 2 CPU processes (gloo): exit 0, one checkpoint holding both ranks' RNG states, replicas in
    sync at the end (checked in the run through a checksum all-gather)."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "fastbert.pretrain", *base_args(corpus, out, "--steps", "4", "--batch-size", "4",
                                                   "--vocab", str(finished_run / "vocab.txt"), "--device", "cpu")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ranks 2" in proc.stdout and "DIVERGED" not in proc.stdout, proc.stdout
    ckpt = torch.load(out / CHECKPOINT_NAME, weights_only=True)
    assert ckpt["position"]["step"] == 4 and ckpt["run"]["world_size"] == 2
    assert len(ckpt["rng"]) == 2
    assert [r["step"] for r in read_log(out / LOG_NAME)] == [1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------
def _expect_error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("case", ["missing-file", "empty-text", "empty-csv", "csv-no-column", "one-document",
                                  "vocab-no-mask", "vocab-missing", "batch-larger-than-data"])
def test_bad_input(corpus, tmp_path, capsys, case):
    out = tmp_path / "out"
    args = base_args(corpus, out)
    data = args.index("--data") + 1
    if case == "missing-file":
        args[data] = str(tmp_path / "nope.txt")
        needles = ["nope.txt", "no such file"]
    elif case == "empty-text":
        args[data] = str(_write(tmp_path / "empty.txt", "\n \n\n"))
        needles = ["no documents"]
    elif case == "empty-csv":
        args[data] = str(_write(tmp_path / "empty.csv", "text,label\n"))
        needles = ["no text in column 'text'"]
    elif case == "csv-no-column":
        args[data] = str(_write(tmp_path / "reviews.csv", "review,sentiment\ngood film,positive\n"))
        needles = ["column 'text' not in", "review"]
    elif case == "one-document":
        args[data] = str(_write(tmp_path / "one.txt", "Only one document here. It has two sentences.\n"))
        needles = ["at least 2"]
    elif case == "vocab-no-mask":
        tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(20)]
        args += ["--vocab", str(_write(tmp_path / "vocab.txt", "\n".join(tokens) + "\n"))]
        needles = ["[MASK]", "vocab.txt"]
    elif case == "vocab-missing":
        args += ["--vocab", str(tmp_path / "no-vocab.txt")]
        needles = ["no-vocab.txt", "no such file"]
    else:
        args[args.index("--batch-size") + 1] = "1000"
        needles = ["not enough data for one optimizer step"]
    _expect_error(capsys, args, *needles)
    assert not out.exists(), "a failed run must not create its output folder"


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_resume_from_another_config_overwrites_nothing(corpus, finished_run, tmp_path, capsys):
    before = _snapshot(finished_run)
    other = _write(tmp_path / "other.json", json.dumps({**TINY_CONFIG, "hidden_size": 32}))
    args = base_args(corpus, finished_run, "--resume")
    args[args.index("--config") + 1] = str(other)
    _expect_error(capsys, args, "another configuration", "hidden_size")
    # another training setting (batch size) is refused the same way
    args = base_args(corpus, finished_run, "--resume")
    args[args.index("--batch-size") + 1] = "4"
    _expect_error(capsys, args, "another configuration", "batch_size")
    assert _snapshot(finished_run) == before


def test_fresh_run_over_checkpoint_or_bad_resume_refused(corpus, finished_run, tmp_path, capsys):
    before = _snapshot(finished_run)
    _expect_error(capsys, base_args(corpus, finished_run), "already holds a checkpoint", "--resume")
    _expect_error(capsys, base_args(corpus, tmp_path / "fresh", "--resume"), "no checkpoint")
    garbage = _write(tmp_path / "garbage.pt", "not a checkpoint")
    _expect_error(capsys, base_args(corpus, finished_run, "--resume", str(garbage)), "cannot be verified")
    assert _snapshot(finished_run) == before
    assert not (tmp_path / "fresh").exists()


@pytest.mark.gpu
def test_gpu_bf16_fused_packed_resume(corpus, finished_run, tmp_path):
    """CUDA: bf16 autocast, fused Triton kernels, padding-free batches, head_dim 64, sequences up to 128. Straight
    vs stop + --resume: per-step losses agree to 1e-3 (CUDA's embedding backward accumulates with atomics, so
    bitwise equality is not promised on GPU; the CPU test above checks it exactly)."""
    config = tmp_path / "gpu.json"
    config.write_text(json.dumps({"hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
                                  "intermediate_size": 1024, "max_position_embeddings": 128}))
    common = ["--config", str(config), "--max-seq-len", "128", "--steps", "8", "--packed", "--device", "cuda",
              "--vocab", str(finished_run / "vocab.txt")]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(base_args(corpus, straight, *common)) == 0
    assert main(base_args(corpus, resumed, *common, "--stop-after", "4")) == 0
    assert main(base_args(corpus, resumed, *common, "--resume")) == 0
    a, b = read_log(straight / LOG_NAME), read_log(resumed / LOG_NAME)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 9))
    for ra, rb in zip(a, b):
        assert math.isfinite(ra["loss"]) and abs(ra["loss"] - rb["loss"]) <= 1e-3, (ra, rb)
    ckpt = torch.load(resumed / CHECKPOINT_NAME, weights_only=True)
    assert ckpt["config"]["attn_implementation"] == "fused" and "cuda" in ckpt["rng"][0]
