"""The training CLIs under damage: nothing lost, nothing silent.

* Checkpoints: a corrupted, truncated, empty or unverifiable ``--resume`` checkpoint (or one holding NaN) is one
  sentence on stderr and exit code 2, and nothing in the run folder changes; saves are atomic and keep the
  previous checkpoint when they fail or are interrupted (including between the manifest and the rename).
* Non-finite training: NaN injected into the loss (the model's forward monkeypatched in this process), NaN/Inf
  weights after an update, or an absurd learning rate stop the run with exit code 3 and leave the last good
  checkpoint and export as they were; ``--skip-nonfinite N`` skips at most N such steps.
* Bad input: empty, binary and non-UTF-8 data files, corrupted model folders, unwritable output folders, a full
  disk (a 64 KiB-scale tmpfs when this process may mount one, else ENOSPC raised by a monkeypatched write) and
  Ctrl-C (SIGINT, sent at random times to the real command line) each give one line on stderr and a documented
  exit code, never a traceback, a hang, NaN, a partial output or a lost checkpoint.

Runs use a 2-layer hidden-64 model on a synthetic corpus; most call ``main(argv)`` in-process.
"""
import csv
import dataclasses
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastbert import BertForPreTraining
from fastbert.finetune import main as finetune
from fastbert.pretrain import main as pretrain
from fastbert.training.checkpoint import CHECKPOINT_NAME, LOG_NAME, CheckpointFile, read_log
from fastbert.training.errors import OutputError
from helpers import CLI_TINY_CONFIG, write_cli_inputs

REPO = Path(__file__).resolve().parents[1]
TINY = CLI_TINY_CONFIG


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Corpus, tiny config, labelled CSV, and a pretraining run of 8 steps stopped after 4 (checkpoint + export)."""
    folder = tmp_path_factory.mktemp("reliability")
    corpus, config = write_cli_inputs(folder)
    labelled = folder / "labelled.csv"
    rng = random.Random(1)
    with open(labelled, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows((f"{rng.choice(['good', 'bad'])} film {i}", rng.choice(["pos", "neg"])) for i in range(40))
    run = folder / "run"
    assert pretrain(pretrain_args(corpus, config, run, "--vocab-size", "300", "--steps", "8", "--stop-after", "4",
                                  "--save-every", "2")) == 0
    return {"corpus": corpus, "config": config, "labelled": labelled, "run": run, "vocab": run / "vocab.txt"}


def pretrain_args(corpus, config, output, *extra):
    return ["--data", str(corpus), "--config", str(config), "--max-seq-len", "32", "--batch-size", "8",
            "--no-progress", "--output", str(output), *extra]


def args_for(files, output, *extra):
    """A pretraining run on the shared corpus and vocabulary."""
    return pretrain_args(files["corpus"], files["config"], output, "--vocab", str(files["vocab"]), *extra)


def snapshot(folder):
    return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}


def one_error_line(capsys, *needles):
    """The single stderr line of a failed in-process run, after checking it holds every needle."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("python -m fastbert.") and "Traceback" not in err[0], err[0]
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


def expect(capsys, entry, argv, code, *needles):
    assert entry(argv) == code
    return one_error_line(capsys, *needles)


def copy_run(files, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(files["run"], out)
    return out


# ---------------------------------------------------------------------------------------------------------------
# checkpoint integrity
# ---------------------------------------------------------------------------------------------------------------
def _overwrite(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _nonfinite_checkpoint(path):
    """A checkpoint whose manifest is valid but whose weights hold a NaN (as an older writer could have left)."""
    state = torch.load(path, weights_only=True)
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name][0] = float("nan")
    CheckpointFile(str(path)).save(state)


DAMAGE = {
    "ff-4k-middle": (lambda p: _overwrite(p, p.stat().st_size // 2, b"\xff" * 4096),
                     "is corrupted (sha256 mismatch: the file changed after it was written)"),
    "ff-4k-start": (lambda p: _overwrite(p, 0, b"\xff" * 4096), "is corrupted (sha256 mismatch"),
    "truncated": (lambda p: os.truncate(p, p.stat().st_size // 3), "is truncated ("),
    "empty": (lambda p: os.truncate(p, 0), "is empty (0 bytes)"),
    "manifest-missing": (lambda p: os.remove(str(p) + ".sha256"), "cannot be verified because its manifest"),
    "manifest-damaged": (lambda p: Path(str(p) + ".sha256").write_text("{not json"), "manifest"),
    "nan-weights": (_nonfinite_checkpoint, "holds NaN or Inf values"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_checkpoint_is_refused_and_nothing_changes(files, tmp_path, capsys, damage):
    out = copy_run(files, tmp_path)
    spoil, needle = DAMAGE[damage]
    spoil(out / CHECKPOINT_NAME)
    before = snapshot(out)
    expect(capsys, pretrain, args_for(files, out, "--steps", "8", "--resume"), 2, needle, str(out / CHECKPOINT_NAME))
    assert snapshot(out) == before


class _FullDisk:
    """A file that takes ``room`` bytes, then fails every write with ENOSPC (as a full disk does)."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)


def full_disk_after(monkeypatch, room: int, from_save: int = 1):
    """From the ``from_save``-th checkpoint written in this process on, the disk fills after ``room`` bytes."""
    from fastbert.training import checkpoint as ckpt_module

    real_init, saves = ckpt_module._HashingWriter.__init__, {"n": 0}

    def init(self, file):
        saves["n"] += 1
        real_init(self, _FullDisk(file, room) if saves["n"] >= from_save else file)

    monkeypatch.setattr(ckpt_module._HashingWriter, "__init__", init)


def test_checkpoint_save_keeps_the_previous_one(tmp_path, monkeypatch):
    """A write that fails (ENOSPC mid torch.save) or is interrupted between the manifest and the rename leaves a
    checkpoint that verifies (the previous one), and no temporary file."""
    path = tmp_path / CHECKPOINT_NAME
    store = CheckpointFile(str(path))
    store.save({"step": 1, "w": torch.ones(1000)})
    first = path.read_bytes()

    real_replace = os.replace

    def interrupted_replace(src, dst):
        if dst == str(path):
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        store.save({"step": 2, "w": torch.full((1000,), 2.0)})
    monkeypatch.undo()
    assert path.read_bytes() == first
    CheckpointFile(str(path)).verify()  # the manifest already names step 2, and still lists step 1 as previous

    full_disk_after(monkeypatch, room=2000)
    with pytest.raises(OutputError, match="No space left on device"):
        store.save({"step": 3, "w": torch.full((1000,), 3.0)})
    monkeypatch.undo()
    assert path.read_bytes() == first
    CheckpointFile(str(path)).verify()
    store.save({"step": 4, "w": torch.full((1000,), 4.0)})
    assert torch.load(path, weights_only=True)["step"] == 4
    CheckpointFile(str(path)).verify()
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME, CHECKPOINT_NAME + ".sha256"]


# ---------------------------------------------------------------------------------------------------------------
# non-finite training
# ---------------------------------------------------------------------------------------------------------------
def nan_at(monkeypatch, calls):
    """Make BertForPreTraining's forward return a NaN loss on the given (1-based) calls in this process."""
    original = BertForPreTraining.forward
    count = {"n": 0}

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        count["n"] += 1
        if count["n"] in calls:
            out = dataclasses.replace(out, loss=out.loss * float("nan"))
        return out

    monkeypatch.setattr(BertForPreTraining, "forward", forward)


def test_nan_loss_stops_and_keeps_last_good_checkpoint_and_export(files, tmp_path, capsys, monkeypatch):
    """Resume the run stopped at step 4 with a NaN loss at step 7: exit 3, the checkpoint of step 6 verifies
    and is finite, the export of step 4 is byte for byte unchanged, and the log holds no NaN."""
    out = copy_run(files, tmp_path)
    export = {name: (out / name).read_bytes() for name in ("model.safetensors", "config.json")}
    nan_at(monkeypatch, {3})
    expect(capsys, pretrain, args_for(files, out, "--steps", "8", "--save-every", "1", "--resume"), 3,
           "step 7: the loss is nan", "nothing was saved after step 6")
    monkeypatch.undo()
    state = CheckpointFile(str(out / CHECKPOINT_NAME)).load("pretrain")
    assert state["position"]["step"] == 6
    assert {name: (out / name).read_bytes() for name in export} == export
    log = read_log(out / LOG_NAME)
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert all(r["loss"] == r["loss"] for r in log)  # no NaN


def test_skip_nonfinite_budget(files, tmp_path, capsys, monkeypatch):
    """--skip-nonfinite 1: one NaN step is skipped (logged, no update) and the run finishes; a second one stops."""
    out = tmp_path / "skip"
    nan_at(monkeypatch, {2})
    assert pretrain(args_for(files, out, "--steps", "4", "--skip-nonfinite", "1")) == 0
    warning = "pretrain: warning: step 2: the loss is nan; update skipped (1 of the 1 allowed by --skip-nonfinite)"
    assert capsys.readouterr().err.strip().splitlines() == [warning]
    log = read_log(out / LOG_NAME)
    assert [r["step"] for r in log] == [1, 2, 3, 4] and log[1]["loss"] is None and "skipped" in log[1]
    state = CheckpointFile(str(out / CHECKPOINT_NAME)).load("pretrain")
    assert state["position"]["skipped"] == 1
    monkeypatch.undo()

    nan_at(monkeypatch, {2, 3})
    assert pretrain(args_for(files, tmp_path / "stop", "--steps", "4", "--skip-nonfinite", "1")) == 3
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == warning and len(lines) == 2, lines
    assert "error: step 3: the loss is nan and --skip-nonfinite 1 is used up" in lines[1], lines
    assert "nothing was saved" in lines[1]
    assert not (tmp_path / "stop" / CHECKPOINT_NAME).exists()


def test_nonfinite_weights_are_never_saved(files, tmp_path, capsys, monkeypatch):
    """An update that leaves Inf in a weight (finite loss and gradients) is caught before the save."""
    out = tmp_path / "inf"
    original = torch.optim.AdamW.step
    count = {"n": 0}

    def step(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        count["n"] += 1
        if count["n"] == 3:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("inf")
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    expect(capsys, pretrain, args_for(files, out, "--steps", "4", "--save-every", "1"), 3,
           "step 3:", "holds NaN or Inf after the update, so it was not saved", "after step 2")
    monkeypatch.undo()
    assert CheckpointFile(str(out / CHECKPOINT_NAME)).load("pretrain")["position"]["step"] == 2


@pytest.mark.parametrize("lr, code, needle", [("1e30", 3, "the loss is nan"), ("1e39", 2, "--lr 1e+39 overflows"),
                                              ("nan", 2, "--lr must be a finite number")])
def test_absurd_learning_rate(files, tmp_path, capsys, lr, code, needle):
    """No monkeypatching: an absurd --lr diverges and stops (3), or is refused up front (2)."""
    out = tmp_path / "lr"
    expect(capsys, pretrain, args_for(files, out, "--steps", "6", "--lr", lr, "--warmup-steps", "0",
                                      "--save-every", "1"), code, needle)
    if (out / CHECKPOINT_NAME).exists():
        CheckpointFile(str(out / CHECKPOINT_NAME)).load("pretrain")  # verifies, and all its tensors are finite
    if code == 2:
        assert not out.exists()


# ---------------------------------------------------------------------------------------------------------------
# bad input files
# ---------------------------------------------------------------------------------------------------------------
BAD_DATA = {  # content -> what the one line must say (with --data and the path, except where marked)
    "empty": (b"", ["is empty (0 bytes)"]),
    "binary": (bytes(random.Random(0).randrange(256) for _ in range(4096)), ["not UTF-8 text (byte 0x"]),
    "latin-1": ("text,label\ncaf\u00e9 cr\u00e8me,pos\nna\u00efve,neg\n".encode("latin-1"),
                ["not UTF-8 text (byte 0xe9 at offset 14)"]),
    # Python >= 3.11 reads NUL inside CSV fields; two rows are then too few to train on (no path in this line)
    "nul-bytes": (b"text,label\nfine,pos\nnul\x00here,neg\n", None),
}


@pytest.mark.parametrize("entry", ["pretrain", "finetune"])
@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_file(files, tmp_path, capsys, entry, case):
    content, needles = BAD_DATA[case]
    data = tmp_path / f"{case}.csv"
    data.write_bytes(content)
    out = tmp_path / "out"
    if entry == "pretrain":
        argv = args_for(files, out, "--steps", "2")
        argv[argv.index("--data") + 1] = str(data)
        run = pretrain
    else:
        argv = ["--data", str(data), "--model", str(files["run"]), "--max-seq-len", "32", "--steps", "2",
                "--no-progress", "--output", str(out)]
        run = finetune
    expect(capsys, run, argv, 2, *(["--data", str(data), *needles] if needles else ["not enough data"]))
    assert not out.exists()


def _truncate_half(path):
    os.truncate(path, path.stat().st_size // 2)


BAD_MODEL = {
    "ff-4k-in-weights": (lambda d: _overwrite(d / "model.safetensors", (d / "model.safetensors").stat().st_size // 2,
                                              b"\xff" * 4096), "the weights hold NaN or Inf values"),
    "garbled-header": (lambda d: _overwrite(d / "model.safetensors", 0, b"\xff" * 64),
                       "the weights file is truncated or corrupted (Error while deserializing header"),
    "truncated-weights": (lambda d: _truncate_half(d / "model.safetensors"), "truncated or corrupted"),
    "empty-weights": (lambda d: os.truncate(d / "model.safetensors", 0), "truncated or corrupted"),
    "binary-config": (lambda d: (d / "config.json").write_bytes(b"\x89PNG\xff\x00" * 50), "config.json: not UTF-8"),
    "config-not-json": (lambda d: (d / "config.json").write_text("{hidden_size: 64"), "config.json: Expecting"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODEL))
def test_corrupted_model_folder(files, tmp_path, capsys, case):
    """fastbert.finetune --model on a damaged folder: one line naming --model, exit 2, no output. (safetensors
    raises SafetensorError for a truncated, empty or garbled-header file; garbage inside the tensor data loads
    silently, and is caught here only when it decodes to NaN/Inf: safetensors keeps no checksum.)"""
    model = tmp_path / "model"
    shutil.copytree(files["run"], model)
    spoil, needle = BAD_MODEL[case]
    spoil(model)
    out = tmp_path / "out"
    argv = ["--data", str(files["labelled"]), "--model", str(model), "--max-seq-len", "32", "--steps", "2",
            "--no-progress", "--output", str(out)]
    expect(capsys, finetune, argv, 2, "--model", needle)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------------------
# output folders: unwritable, full
# ---------------------------------------------------------------------------------------------------------------
def _mount_tmpfs(folder: Path, options: str) -> bool:
    """Mount a tmpfs on ``folder`` when this process may (root, mount available); False otherwise."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    return proc.returncode == 0


def _umount(folder: Path) -> None:
    subprocess.run(["umount", str(folder)], capture_output=True)


def test_output_under_a_file(files, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    expect(capsys, pretrain, args_for(files, blocker / "out", "--steps", "2"), 2, "--output",
           "cannot be created because", "a-file' is a file")


def test_output_not_writable(files, tmp_path, capsys):
    """A read-only tmpfs when root may mount one (chmod does not stop root), else a chmod 0o500 folder."""
    parent = tmp_path / "readonly"
    mounted = _mount_tmpfs(parent, "ro,size=64k")
    if not mounted:
        if os.geteuid() == 0:
            pytest.skip("running as root without mount: no way to make a folder unwritable")
        parent.chmod(0o500)
    try:
        expect(capsys, pretrain, args_for(files, parent / "out", "--steps", "2"), 2, "--output",
               "no write permission in")
    finally:
        if mounted:
            _umount(parent)
        parent.chmod(0o700)


def test_disk_full_keeps_previous_checkpoint(files, tmp_path, capsys, monkeypatch):
    """--save-every 1 on a disk with room for one checkpoint: the second save fails with exit 4 and one line, the
    first checkpoint still verifies, no temporary file is left, and --resume continues on a bigger disk. A real
    tmpfs when this process may mount one, else a file object that fails with ENOSPC (monkeypatched in)."""
    size = (files["run"] / CHECKPOINT_NAME).stat().st_size
    disk = tmp_path / "disk"
    mounted = _mount_tmpfs(disk, f"size={(size * 3 // 2) // 4096 * 4096 + 64 * 1024}")
    if not mounted:
        full_disk_after(monkeypatch, room=size // 2, from_save=2)
    out = disk / "run"
    try:
        expect(capsys, pretrain, args_for(files, out, "--steps", "4", "--save-every", "1"), 4,
               "could not write the checkpoint", "No space left on device", "previous checkpoint is unchanged")
        assert CheckpointFile(str(out / CHECKPOINT_NAME)).load("pretrain")["position"]["step"] == 1
        assert not [p.name for p in out.iterdir() if ".tmp-" in p.name or p.name.startswith(".export-")]
        moved = tmp_path / "moved"
        shutil.copytree(out, moved)
    finally:
        monkeypatch.undo()
        if mounted:
            _umount(disk)
    assert pretrain(args_for(files, moved, "--steps", "4", "--save-every", "1", "--resume")) == 0
    assert [r["step"] for r in read_log(moved / LOG_NAME)] == [1, 2, 3, 4]


def test_failed_export_keeps_previous_export(files, tmp_path, capsys, monkeypatch):
    """The export at the end fails half-way (ENOSPC while writing model.safetensors): exit 4, the previous export is
    byte for byte unchanged, the final checkpoint verifies, and --resume (nothing left to train) exports again."""
    out = copy_run(files, tmp_path)
    before = {name: (out / name).read_bytes() for name in ("model.safetensors", "config.json", "vocab.txt")}

    def half_written(self, folder):
        (Path(folder) / "model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(BertForPreTraining, "save_pretrained", half_written)
    expect(capsys, pretrain, args_for(files, out, "--steps", "8", "--resume"), 4, "could not export the model",
           "No space left on device", "previously exported files are unchanged")
    monkeypatch.undo()
    assert {name: (out / name).read_bytes() for name in before} == before
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert CheckpointFile(str(out / CHECKPOINT_NAME)).load("pretrain")["position"]["step"] == 8
    assert pretrain(args_for(files, out, "--steps", "8", "--resume")) == 0
    assert "already done, model exported again" in capsys.readouterr().out
    assert (out / "model.safetensors").read_bytes() != before["model.safetensors"]
    BertForPreTraining.from_pretrained(out)


# ---------------------------------------------------------------------------------------------------------------
# Ctrl-C and kill -9 on the real command line
# ---------------------------------------------------------------------------------------------------------------
def test_interrupts_never_lose_the_checkpoint(files, tmp_path):
    """The command line with --save-every 1 and a model whose checkpoint takes a while to write: SIGINT (once, or
    twice in quick succession to cut through the graceful stop) and one SIGKILL at random moments. After each, the
    checkpoint verifies; SIGINT exits 130 with one line and no traceback. Resuming to the end gives the same
    per-step losses as an uninterrupted run."""
    config = tmp_path / "mid.json"
    config.write_text(json.dumps({**TINY, "hidden_size": 128, "intermediate_size": 256}))
    cut, straight = tmp_path / "cut", tmp_path / "straight"
    common = pretrain_args(files["corpus"], config, cut, "--vocab", str(files["vocab"]), "--batch-size", "4",
                           "--steps", "50", "--save-every", "1")
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # as in this process: same sums
    rng = random.Random(0)
    log = cut / LOG_NAME
    for attempt, how in enumerate(["sigint", "sigint-twice", "sigkill", "sigint-twice"]):
        argv = [sys.executable, "-m", "fastbert.pretrain", *common, *(["--resume"] if attempt else [])]
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        start = log.stat().st_size if log.exists() else 0
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline and (
                not log.exists() or log.stat().st_size <= start):  # wait for this invocation's first step
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGINT)
        if how == "sigint-twice":
            time.sleep(rng.uniform(0.0, 0.05))
            proc.send_signal(signal.SIGINT)
        stdout, err = proc.communicate(timeout=120)
        if how != "sigkill" and "step 50/50" not in stdout:  # (a signal that came after the run ended tests nothing)
            lines = err.strip().splitlines()
            assert proc.returncode == 130 and len(lines) == 1, (attempt, proc.returncode, err, stdout)
            assert lines[0].startswith("python -m fastbert.pretrain: error: interrupted"), lines
        CheckpointFile(str(cut / CHECKPOINT_NAME)).load("pretrain")
    no_saves = common[:-2]  # --save-every changes nothing numerically (saving draws no random numbers)
    assert pretrain([*no_saves, "--resume"]) == 0
    assert pretrain([str(straight) if a == str(cut) else a for a in no_saves]) == 0
    key = [(r["step"], r["loss"]) for r in read_log(log)]
    assert key == [(r["step"], r["loss"]) for r in read_log(straight / LOG_NAME)] and len(key) == 50
