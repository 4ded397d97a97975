import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from tests.helpers import ROOT
from training.arch.spec import spec_from_stage_strings
from training.checkpoint import json_path, read_checkpoint
from training.errors import SpecError
from training.loop import train
from training.recipe import Recipe

# Three blocks (one residual, so drop-connect draws random numbers), 16 px, 4 classes: ~5k parameters.
STAGES = ["r1_k3_s11_e1_i32_o16_se0.25", "r2_k3_s22_e4_i16_o24_se0.25"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and a busy 2-core host makes OpenMP's second thread a large cost."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_spec(**changes):
    base = dict(width=0.5, resolution=16, num_classes=4, head_filters=64, bn_momentum=0.1)
    return spec_from_stage_strings(STAGES, **{**base, **changes})


def synthetic(n, seed):
    """Learnable: class c < 3 brightens channel c, class 3 darkens every channel; plus noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    images = torch.randn(n, 3, 16, 16, generator=generator) * 0.5
    for c in range(3):
        images[labels == c, c] += 1.0
    images[labels == 3] -= 0.7
    return TensorDataset(images, labels)


class RandomFlip(Dataset):
    """Augmentation drawing from the global torch RNG in the loading process (as transforms do)."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        image, label = self.base[index]
        return (image.flip(-1) if torch.rand(()) < 0.5 else image), label


class Crashing(RandomFlip):
    """Dies after `budget` items: a kill in the middle of an epoch."""

    def __init__(self, base, budget):
        super().__init__(base)
        self.budget = budget

    def __getitem__(self, index):
        if self.budget == 0:
            raise KeyboardInterrupt("simulated kill")
        self.budget -= 1
        return super().__getitem__(index)


RECIPE = Recipe(epochs=3, batch_size=32, base_lr=0.1, warmup_epochs=0.5, ema_decay=0.99, num_workers=0)
TRAIN, VAL = synthetic(128, 0), synthetic(64, 1)


def run(out, recipe=RECIPE, train_set=TRAIN, spec=None, **kwargs):
    kwargs.setdefault("progress", False)
    kwargs.setdefault("log", lambda line: None)
    return train(spec or tiny_spec(), train_set, VAL, recipe, out, "data-v1", **kwargs)


def tensors(out, kind="final"):
    return read_checkpoint(json_path(out, kind)).tensors


@pytest.mark.parametrize("optimizer", ["rmsprop", "adamw"])
def test_learns_a_learnable_task(tmp_path, optimizer):
    recipe = RECIPE.with_(epochs=4, optimizer=optimizer, base_lr=0.4 if optimizer == "rmsprop" else 0.04)
    metrics = run(tmp_path, recipe)
    history = read_checkpoint(json_path(tmp_path, "last")).meta["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert metrics["ema_top1"] > 0.6 and metrics["raw_top1"] > 0.6  # chance is 0.25
    assert metrics["ema_top5"] == 1.0  # top-min(5, 4): every label is among the 4 classes
    assert metrics["epochs"] == 4 and metrics["global_step"] == 16 and metrics["images_per_s"] > 0
    assert metrics["best_epoch"] is not None and (tmp_path / "best.json").exists()
    final = read_checkpoint(json_path(tmp_path, "final")).meta
    assert final["metrics"] == metrics and final["finished"] and final["data_fingerprint"] == "data-v1"
    assert Recipe.from_dict(final["recipe"]) == recipe


@pytest.mark.parametrize("optimizer", ["rmsprop", "adamw"])
def test_resume_after_a_kill_is_bit_identical(tmp_path, optimizer):
    spec = tiny_spec(dropout=0.3, drop_connect=0.3)  # random draws everywhere: dropout, drop-connect, flips
    recipe = RECIPE.with_(optimizer=optimizer)
    whole = run(tmp_path / "whole", recipe, spec=spec, train_set=RandomFlip(TRAIN))
    with pytest.raises(KeyboardInterrupt):  # killed in the middle of epoch 2
        run(tmp_path / "split", recipe, spec=spec, train_set=Crashing(TRAIN, budget=128 + 70))
    assert read_checkpoint(json_path(tmp_path / "split", "last")).meta["epoch"] == 1
    resumed = run(tmp_path / "split", recipe, spec=spec, train_set=RandomFlip(TRAIN), resume=True)
    a, b = tensors(tmp_path / "whole"), tensors(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a, b = tensors(tmp_path / "whole", "last"), tensors(tmp_path / "split", "last")
    assert any(k.startswith("optimizer/") for k in a) and all(torch.equal(a[k], b[k]) for k in a)
    for key in ("ema_top1", "raw_top1", "ema_loss", "train_loss", "global_step", "epochs"):
        assert whole[key] == resumed[key]


def test_resuming_a_finished_run_says_so(tmp_path):
    first = run(tmp_path, RECIPE.with_(epochs=1))
    stamp = (tmp_path / "final.json").stat().st_mtime_ns
    lines = []
    again = run(tmp_path, None, resume=True, log=lines.append)  # recipe None: the checkpoint's
    assert again == first
    assert any("already finished" in line for line in lines)
    assert (tmp_path / "final.json").stat().st_mtime_ns == stamp
    # More epochs continue the finished run.
    longer = run(tmp_path, RECIPE.with_(epochs=2), resume=True)
    assert longer["epochs"] == 2 and longer["global_step"] == 8


def test_refuses_to_overwrite_and_checks_what_it_resumes(tmp_path):
    run(tmp_path, RECIPE.with_(epochs=1))
    with pytest.raises(SpecError, match="already holds a training run .*--resume"):
        run(tmp_path, RECIPE.with_(epochs=1))
    with pytest.raises(SpecError, match="different model"):
        run(tmp_path, RECIPE.with_(epochs=2), spec=tiny_spec(width=0.75), resume=True)
    with pytest.raises(SpecError, match="recipe differs .*base_lr: 0.1 -> 0.2"):
        run(tmp_path, RECIPE.with_(epochs=2, base_lr=0.2), resume=True)
    with pytest.raises(SpecError, match="data set changed .*--allow-data-change"):
        train(tiny_spec(), TRAIN, VAL, RECIPE, tmp_path, "data-v2", resume=True, progress=False, log=lambda line: None)
    metrics = train(tiny_spec(), TRAIN, VAL, RECIPE.with_(epochs=2), tmp_path, "data-v2", resume=True, progress=False,
                    log=lambda line: None, allow_data_change=True)
    assert metrics["epochs"] == 2


def test_resume_without_a_checkpoint_starts_fresh_and_steps_can_be_capped(tmp_path):
    lines = []
    metrics = run(tmp_path / "new", RECIPE.with_(epochs=2), resume=True, max_steps_per_epoch=1, log=lines.append)
    assert metrics["global_step"] == 2 and any("starting a new run" in line for line in lines)


def test_user_errors_are_spec_errors(tmp_path):
    with pytest.raises(SpecError, match="label 3, outside \\[0, 3\\)"):
        run(tmp_path / "a", spec=tiny_spec(num_classes=3))
    with pytest.raises(SpecError, match="fewer than one batch of 256"):
        run(tmp_path / "b", RECIPE.with_(batch_size=256))
    with pytest.raises(SpecError, match="precision fp16 needs a CUDA device"):
        run(tmp_path / "c", RECIPE.with_(precision="fp16"), device="cpu")
    with pytest.raises(SpecError, match="max_steps_per_epoch"):
        run(tmp_path / "d", max_steps_per_epoch=0)


DDP_SCRIPT = """
import hashlib, json, os, sys
sys.path.insert(0, {repo!r})
import torch
from torch.utils.data import Dataset
import training.loop as engine
from tests.training.test_train import RECIPE, TRAIN, VAL, tiny_spec

class Recording(Dataset):
    def __init__(self, base):
        self.base, self.seen = base, []
    def __len__(self):
        return len(self.base)
    def __getitem__(self, index):
        self.seen.append(index)
        return self.base[index]

run = engine._Trainer.run
def spy(self, resume):
    metrics = run(self, resume)
    digest = hashlib.sha256()
    for tensor in list(self.model.state_dict().values()) + list(self.ema.state_dict().values()):
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    path = os.path.join(sys.argv[1], f"rank{{self.ctx.rank}}.json")
    json.dump(dict(seen=data.seen, digest=digest.hexdigest(), metrics=metrics, world=self.ctx.world_size), open(path, "w"))
    return metrics
engine._Trainer.run = spy

data = Recording(TRAIN)
recipe = RECIPE.with_(epochs=2, schedule="exponential")  # lr independent of the epoch count, for the split run
if sys.argv[2] == "whole":  # train() joins the group itself
    engine.train(tiny_spec(), data, VAL, recipe, os.path.join(sys.argv[1], "run"), "data-v1", progress=False, device="cpu")
else:  # one epoch, then a resume, in a group the caller set up (re-joining a group in one process is not supported)
    import torch.distributed as dist
    dist.init_process_group("gloo")
    engine._Trainer.run = run
    split = os.path.join(sys.argv[1], "split")
    engine.train(tiny_spec(), TRAIN, VAL, recipe.with_(epochs=1), split, "data-v1", progress=False, device="cpu")
    engine.train(tiny_spec(), TRAIN, VAL, recipe, split, "data-v1", resume=True, progress=False, device="cpu")
    assert dist.is_initialized()  # train() leaves a group it did not create
    dist.destroy_process_group()
"""


TEARDOWN_ABORT = "terminate called without an active exception"


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT.format(repo=str(ROOT)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    for mode in ("whole", "split"):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path), mode]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
        if done.returncode and TEARDOWN_ABORT in done.stderr:
            # Once in CI (2026-12-03; never in 65 launches by hand) a rank aborted so in torch's own teardown, after
            # its last epoch and checkpoint. One more launch tells that apart from a failure of ours, which repeats.
            shutil.rmtree(tmp_path / ("run" if mode == "whole" else "split"), ignore_errors=True)
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    epochs = 2
    for epoch in range(epochs):  # each epoch: the two shards are disjoint and cover the data set
        shards = [set(r["seen"][epoch * 64:(epoch + 1) * 64]) for r in ranks]
        assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == 128
    assert ranks[0]["digest"] == ranks[1]["digest"]  # the same weights, BN statistics and EMA on both ranks
    assert ranks[0]["metrics"] == ranks[1]["metrics"]  # evaluation was all-reduced
    final = read_checkpoint(json_path(tmp_path / "run", "final"))
    assert final.meta["world_size"] == 2 and final.meta["epoch"] == epochs
    assert len(final.meta["history"]) == epochs
    last = read_checkpoint(json_path(tmp_path / "run", "last"))
    assert len(last.meta["rng"]) == 2 and last.meta["rng"][0] != last.meta["rng"][1]
    a, b = final.tensors, tensors(tmp_path / "split")  # a distributed resume is exact too
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (mixed precision and channels_last run on CUDA only)")
def test_cuda_mixed_precision_and_channels_last(tmp_path):
    metrics = run(tmp_path, RECIPE.with_(epochs=2), device="cuda")
    assert metrics["ema_top1"] is not None
    last = read_checkpoint(json_path(tmp_path, "last")).meta
    assert "cuda" in last["rng"][0]
    fp16 = run(tmp_path / "fp16", RECIPE.with_(epochs=1, precision="fp16"), device="cuda")
    assert fp16["epochs"] == 1 and read_checkpoint(json_path(tmp_path / "fp16", "last")).meta["grad_scaler"]["scale"] > 0


def test_resume_is_bit_identical_with_loader_workers_too(tmp_path):
    """Worker seeds come from a generator re-seeded from (seed, epoch, rank), not from the run's history."""
    recipe = RECIPE.with_(epochs=2, num_workers=1, schedule="exponential")  # lr independent of the epoch count
    run(tmp_path / "whole", recipe, train_set=RandomFlip(TRAIN))
    run(tmp_path / "split", recipe.with_(epochs=1), train_set=RandomFlip(TRAIN))
    run(tmp_path / "split", recipe, train_set=RandomFlip(TRAIN), resume=True)
    a, b = tensors(tmp_path / "whole"), tensors(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    """torchrun with 2 processes on a 1-GPU machine: rank 1 says so, instead of CUDA's 'invalid device ordinal'."""
    from training.distributed import setup

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: pytest.fail(f"set_device({device}) reached"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(SpecError, match=r"process 1 of 2 on this node would train on cuda:1, but this machine has 1 CUDA device\(s\): "
                                        r"launch at most 1 per node \(torchrun --nproc_per_node 1\) or use device 'cpu'"):
        setup(None)
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(SpecError, match=r"device cuda:3 does not exist: this machine has 1 CUDA device\(s\)"):
        setup("cuda:3")


def test_device_choice(tmp_path):
    from training.distributed import setup

    assert setup("cpu").device == torch.device("cpu") and setup("cpu").world_size == 1
    with pytest.raises(SpecError, match="unknown device 'tpu'"):
        setup("tpu")
    if not torch.cuda.is_available():
        assert setup(None).device == torch.device("cpu")
        with pytest.raises(SpecError, match="CUDA is not available"):
            run(tmp_path, device="cuda")


def test_without_a_validation_set(tmp_path):
    metrics = train(tiny_spec(), TRAIN, None, RECIPE.with_(epochs=1), tmp_path, "data-v1", progress=False, log=lambda line: None)
    assert metrics["ema_top1"] is None and metrics["train_loss"] > 0 and metrics["best_epoch"] is None
    assert not (tmp_path / "best.json").exists() and (tmp_path / "final.json").exists()


def test_a_kill_while_finishing_is_repaired_on_resume(tmp_path):
    first = run(tmp_path, RECIPE.with_(epochs=1))
    for path in tmp_path.glob("final*"):
        path.unlink()
    assert run(tmp_path, None, resume=True) == first
    assert read_checkpoint(json_path(tmp_path, "final")).meta["steps_per_epoch"] == 4
