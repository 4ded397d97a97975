"""The training engine behind `effx-serve train`: one code path for one process and for torchrun.

`train()` builds the model of a spec, trains it with the recipe (TF RMSProp or SGD, warm-up then
exponential or cosine lr, label smoothing, EMA of weights and BN statistics, mixed precision and
channels_last on CUDA), evaluates the raw and the EMA weights every epoch, and checkpoints every epoch.

Exact resume: everything a step depends on is either saved (weights, EMA, optimizer state, global
step, GradScaler, every process's RNG states) or a pure function of (seed, epoch, rank): the shuffle
(DistributedSampler seeded with the recipe seed and `set_epoch`, also with one process) and the data
loader's worker seeds (a generator re-seeded per epoch). The lr is a function of the global step. So on
CPU, with `num_workers=0`, N uninterrupted epochs and k epochs + a resume for N - k produce the same bits.
A run killed mid-epoch restarts that epoch from the previous checkpoint.

Distributed: with WORLD_SIZE > 1 (torchrun) each process joins the group, wraps the model in
DistributedDataParallel, reads its shard of the data (the global batch is split evenly), all-reduces
metrics; rank 0 alone writes checkpoints, and all ranks wait for it. Every rank reads the checkpoint
when resuming, so the output directory must be on a file system all of them see.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from effx_serve.core.fs import held
from training import distributed, rng
from training.arch.model import build_model
from training.arch.spec import ModelSpec
from training.checkpoint import (
    Checkpoint,
    check_compatible,
    existing,
    flatten_optimizer,
    json_path,
    optimizer_param_names,
    read_checkpoint,
    restore_optimizer,
    save_checkpoint,
)
from training.ema import ModelEma
from training.errors import SpecError
from training.optim import build_optimizer, set_lr
from training.recipe import RESUMABLE_CHANGES, Recipe

Log = Callable[[str], None]


def train(
    spec: ModelSpec,
    train_set: Dataset,
    val_set: Dataset | None,
    recipe: Recipe | None,
    out_dir: str | Path,
    data_fingerprint: str,
    resume: bool = False,
    progress: bool = True,
    max_steps_per_epoch: int | None = None,
    *,
    device: str | torch.device | None = None,
    allow_data_change: bool = False,
    log: Log | None = None,
) -> dict[str, Any]:
    """Train `spec` on `train_set` (items: CHW float tensor, int label), checkpointing into `out_dir`.

    `recipe=None` means the checkpoint's recipe when resuming, else `Recipe()`. A recipe given on resume
    may differ from the checkpoint's only in epochs (to train longer) and num_workers. `val_set=None`
    skips evaluation (and so the `best` checkpoint). `max_steps_per_epoch` caps the steps of every epoch
    (smoke runs). `device` overrides the automatic choice (cuda if available, else cpu). `log` receives
    one-line messages on rank 0 (default: stderr).

    Returns the final metrics: EMA and raw top-1/top-5/loss on `val_set`, training loss and accuracy of
    the last epoch, images/s, epochs, global step, best epoch.
    """
    if max_steps_per_epoch is not None and (not isinstance(max_steps_per_epoch, int) or max_steps_per_epoch < 1):
        raise SpecError(f"max_steps_per_epoch must be a positive integer, got {max_steps_per_epoch!r}")
    ctx = distributed.setup(device)
    try:
        # Two runs writing one folder would overwrite each other's checkpoints (rank 0 alone writes them).
        with held(Path(out_dir), "training run") if ctx.is_main else contextlib.nullcontext():
            trainer = _Trainer(ctx, spec, train_set, val_set, recipe, Path(out_dir), data_fingerprint, progress,
                               max_steps_per_epoch, allow_data_change, log)
            return trainer.run(resume)
    finally:
        distributed.teardown(ctx)


def _derive_seed(*parts: object) -> int:
    """A 63-bit seed from a tuple such as (seed, "loader", epoch, rank): independent streams, no collisions."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. Mixed precision is a CUDA feature here."""
    if device.type != "cuda":
        if precision in ("bf16", "fp16"):
            raise SpecError(f"precision {precision} needs a CUDA device; on {device} use precision 'auto' or 'fp32'")
        return None
    if precision == "fp32":
        return None
    bf16 = torch.cuda.is_bf16_supported()
    if precision == "bf16" and not bf16:
        raise SpecError(f"this GPU ({torch.cuda.get_device_name(device)}) has no bf16; use precision 'fp16' or 'auto'")
    if precision == "fp16" or (precision == "auto" and not bf16):
        return torch.float16
    return torch.bfloat16


def _prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}/{name}": tensor for name, tensor in state.items()}


def _load_module(module: nn.Module, state: dict[str, torch.Tensor], what: str, where: Path) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise SpecError(f"checkpoint {where}: the {what} tensors do not fit this model ({first})") from None


class _Trainer:
    def __init__(self, ctx: distributed.DistContext, spec: ModelSpec, train_set: Dataset, val_set: Dataset | None,
                 recipe: Recipe | None, out_dir: Path, data_fingerprint: str, progress: bool, max_steps: int | None,
                 allow_data_change: bool, log: Log | None):
        self.ctx = ctx
        self.spec = spec
        self.train_set = train_set
        self.val_set = val_set
        self.recipe = recipe
        self.out = out_dir
        self.fingerprint = data_fingerprint
        self.show = progress and ctx.is_main
        self.max_steps = max_steps
        self.allow_data_change = allow_data_change
        self._log = log or (lambda line: tqdm.write(line, file=sys.stderr))
        self.epoch = 0  # completed epochs
        self.step = 0  # optimizer steps taken
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None

    def log(self, line: str) -> None:
        if self.ctx.is_main:
            self._log(line)

    # --- the run ------------------------------------------------------------------------
    def run(self, resume: bool) -> dict[str, Any]:
        checkpoint = self._starting_point(resume)
        if self.recipe is None:
            self.recipe = Recipe()
        if checkpoint is not None and checkpoint.meta["epoch"] >= self.recipe.epochs:
            return self._already_finished(checkpoint)
        self._prepare_out_dir()
        self._build()
        if checkpoint is not None:
            self._restore(checkpoint)
            del checkpoint
            self.log(f"resuming {self.out} at epoch {self.epoch + 1}/{self.recipe.epochs} (step {self.step})")
        for epoch in range(self.epoch, self.recipe.epochs):
            entry = self._train_epoch(epoch)
            self._sync_replicas()
            if self.val_loader is not None:
                entry.update(self._evaluate())
            self.epoch = epoch + 1
            self.history.append(entry)
            improved = "ema_top1" in entry and (self.best is None or entry["ema_top1"] > self.best["ema_top1"])
            if improved:
                self.best = {"epoch": self.epoch, "ema_top1": entry["ema_top1"]}
            self.log(_summary(entry, self.recipe.epochs))
            # best before last: a kill between the two repeats this epoch, which rewrites the same best.
            if improved:
                self._save("best")
            self._save("last")
        metrics = self._metrics()
        self._save("final", metrics)
        return metrics

    def _starting_point(self, resume: bool) -> Checkpoint | None:
        found = existing(self.out)
        if not resume:
            if found:
                raise SpecError(
                    f"{self.out} already holds a training run ({found[0].name}); pass --resume to continue it, "
                    "or choose another output directory"
                )
            return None
        last = json_path(self.out, "last")
        if not last.exists():
            if found:
                raise SpecError(f"{self.out} holds {found[0].name} but no {last.name} to resume from; choose another output directory")
            self.log(f"no checkpoint in {self.out}: starting a new run")
            return None
        checkpoint = read_checkpoint(last)
        check_compatible(checkpoint, self.spec, self.fingerprint, self.allow_data_change)
        try:
            saved = Recipe.from_dict(checkpoint.meta.get("recipe"))
        except SpecError as error:
            raise SpecError(f"checkpoint {last}: {error}") from None
        if self.recipe is None:
            self.recipe = saved
        else:
            if self.recipe.epochs != saved.epochs and self.recipe.schedule == "cosine":
                self.log(f"note: epochs changed from {saved.epochs} to {self.recipe.epochs}; the cosine schedule is "
                         "recomputed for the new length from the current step on")
            changed = saved.differences(self.recipe, ignore=RESUMABLE_CHANGES)
            if changed:
                raise SpecError(
                    f"the recipe differs from the one {last} was trained with ({'; '.join(changed)}); resume with the "
                    "same settings (or none, to reuse the checkpoint's) or choose another output directory"
                )
        if not isinstance(checkpoint.meta.get("epoch"), int) or not isinstance(checkpoint.meta.get("global_step"), int):
            raise SpecError(f"checkpoint {last} has no epoch or global step; it is corrupt")
        return checkpoint

    def _already_finished(self, checkpoint: Checkpoint) -> dict[str, Any]:
        epoch = checkpoint.meta["epoch"]
        final = json_path(self.out, "final")
        record = None
        if final.exists():
            record = read_checkpoint(final).meta
            if record.get("epoch") != epoch:
                record = None
        if record is None:  # killed while writing the final checkpoint: write it from the last one
            self.epoch, self.step = epoch, checkpoint.meta["global_step"]
            self.history, self.best = checkpoint.meta.get("history", []), checkpoint.meta.get("best")
            self.steps_per_epoch = checkpoint.meta.get("steps_per_epoch")
            metrics = self._metrics()
            if self.ctx.is_main:
                tensors = {k: v for k, v in checkpoint.tensors.items() if not k.startswith("optimizer/")}
                save_checkpoint(self.out, "final", self._meta(metrics), tensors)
            distributed.barrier(self.ctx)
        else:
            metrics = record["metrics"]
        self.log(f"{self.out}: training already finished ({epoch} epochs); nothing to do (raise epochs to train longer)")
        return metrics

    def _prepare_out_dir(self) -> None:
        if self.ctx.is_main:
            try:
                self.out.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise SpecError(f"cannot create output directory {self.out}: {error.strerror}") from None
        distributed.barrier(self.ctx)

    # --- setup --------------------------------------------------------------------------
    def _build(self) -> None:
        recipe, ctx = self.recipe, self.ctx
        if recipe.batch_size % ctx.world_size:
            raise SpecError(f"batch size {recipe.batch_size} does not split evenly over {ctx.world_size} processes; "
                            f"use a multiple of {ctx.world_size}")
        local_batch = recipe.batch_size // ctx.world_size
        cuda = ctx.device.type == "cuda"
        self.amp_dtype = _amp_dtype(recipe.precision, ctx.device)
        use_channels_last = recipe.channels_last == "on" or (recipe.channels_last == "auto" and cuda)
        self.memory_format = torch.channels_last if use_channels_last else torch.contiguous_format
        if cuda:
            torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels

        rng.seed_everything(recipe.seed)
        model = build_model(self.spec)  # the same initial weights on every process
        if recipe.zero_init_residual:
            model.zero_init_residual()
        rng.seed_everything(_derive_seed(recipe.seed, "process", ctx.rank))  # but different dropout masks
        self.model = model.to(device=ctx.device, memory_format=self.memory_format)
        self.ema = ModelEma(self.model, recipe.ema_decay, recipe.ema_warmup)
        self.net: nn.Module = self.model
        if ctx.distributed:
            self.net = DistributedDataParallel(self.model, device_ids=[ctx.device.index] if cuda else None)

        if len(self.train_set) == 0:
            raise SpecError("the training set is empty")
        # Also with one process: the shuffle of epoch e is a function of (seed, e), which resuming needs.
        self.sampler = DistributedSampler(self.train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                          seed=recipe.seed, drop_last=False)
        self.loader_generator = torch.Generator()
        # drop_last: a ragged last batch would weigh its few images more, and a batch of 1 breaks BatchNorm.
        # No persistent workers: fresh workers each epoch take their seeds from the per-epoch generator.
        self.train_loader = DataLoader(self.train_set, batch_size=local_batch, sampler=self.sampler, drop_last=True,
                                       num_workers=recipe.num_workers, pin_memory=cuda, generator=self.loader_generator)
        if len(self.train_loader) == 0:
            raise SpecError(f"the training set has {len(self.train_set)} images, fewer than one batch of {recipe.batch_size} "
                            f"({local_batch} per process); lower the batch size")
        self.steps_per_epoch = min(len(self.train_loader), self.max_steps or len(self.train_loader))
        self.val_loader = None
        if self.val_set is not None:
            if len(self.val_set) == 0:
                raise SpecError("the validation set is empty")
            # Exact shards (no padding with repeated images), so the all-reduced counts cover each image once.
            shard = range(ctx.rank, len(self.val_set), ctx.world_size)
            self.val_loader = DataLoader(self.val_set, batch_size=local_batch, sampler=shard, num_workers=recipe.num_workers,
                                         pin_memory=cuda, generator=torch.Generator().manual_seed(0))

        self.optimizer, self.schedule = build_optimizer(self.model, recipe, self.steps_per_epoch)
        self.param_names = optimizer_param_names(self.optimizer, self.model)
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=self.amp_dtype == torch.float16)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)

    def _restore(self, checkpoint: Checkpoint) -> None:
        meta, where = checkpoint.meta, checkpoint.path
        _load_module(self.model, checkpoint.section("model"), "model", where)
        _load_module(self.ema.module, checkpoint.section("ema"), "EMA", where)
        if "optimizer" not in meta:
            raise SpecError(f"checkpoint {where} has no optimizer state; it cannot be resumed")
        restore_optimizer(self.optimizer, self.param_names, checkpoint.section("optimizer"), meta["optimizer"], where)
        if meta.get("grad_scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(meta["grad_scaler"])
        self.epoch, self.step = meta["epoch"], meta["global_step"]
        self.history, self.best = list(meta.get("history", [])), meta.get("best")
        same_shape = meta.get("world_size") == self.ctx.world_size and meta.get("steps_per_epoch") == self.steps_per_epoch
        states = meta.get("rng") or []
        if same_shape and len(states) == self.ctx.world_size:
            rng.restore(states[self.ctx.rank])
        else:
            rng.seed_everything(_derive_seed(self.recipe.seed, "resume", self.epoch, self.ctx.rank))
            self.log(f"note: the checkpoint ran on {meta.get('world_size')} process(es) with {meta.get('steps_per_epoch')} steps per "
                     f"epoch, this run on {self.ctx.world_size} with {self.steps_per_epoch}: training continues, "
                     "but not bit-identically to an uninterrupted run")

    # --- one epoch ----------------------------------------------------------------------
    def _check_batch(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise SpecError(f"the data set yields images of shape {tuple(images.shape[1:])}; the model needs CHW with 3 channels")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise SpecError(f"the data set yields labels of type {labels.dtype}; they must be integer class indices")
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= self.spec.num_classes:
            bad = low if low < 0 else high
            raise SpecError(f"the data set has label {bad}, outside [0, {self.spec.num_classes}) of a model with "
                            f"num_classes={self.spec.num_classes}; set num_classes to the data set's number of classes")

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        recipe, ctx = self.recipe, self.ctx
        self.sampler.set_epoch(epoch)
        self.loader_generator.manual_seed(_derive_seed(recipe.seed, "loader", epoch, ctx.rank))
        self.net.train()
        totals = torch.zeros(3, dtype=torch.float64, device=ctx.device)  # loss * images, correct, images
        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{recipe.epochs}", unit="step", leave=False,
                   disable=not self.show, dynamic_ncols=True, file=sys.stderr)
        autocast = (torch.autocast(ctx.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else contextlib.nullcontext())
        start = time.perf_counter()
        for index, (images, labels) in enumerate(self.train_loader):
            if index >= self.steps_per_epoch:
                break
            self._check_batch(images, labels)
            images = images.to(ctx.device, non_blocking=True, memory_format=self.memory_format)
            labels = labels.to(ctx.device, non_blocking=True)
            set_lr(self.optimizer, self.schedule(self.step))
            with autocast:
                logits = self.net(images)
            loss = self.criterion(logits.float(), labels)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.ema.update(self.model, self.step)
            self.step += 1
            with torch.no_grad():
                totals[0] += loss.detach().double() * labels.shape[0]
                totals[1] += (logits.argmax(1) == labels).sum()
                totals[2] += labels.shape[0]
            bar.update(1)
            # Reading values synchronises a GPU, so the bar's numbers refresh every 10 steps only.
            if self.show and (index % 10 == 0 or index + 1 == self.steps_per_epoch):
                loss_sum, correct, seen = totals.tolist()
                rate = seen * ctx.world_size / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.1%}", img_s=f"{rate:.0f}")
        bar.close()
        totals[2].item()  # waits for the GPU, so the time below is real
        elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64, device=ctx.device)
        # The mean time over processes, so every process reports the same numbers.
        loss_sum, correct, seen, seconds = distributed.all_reduce_sum(ctx, torch.cat([totals, elapsed])).tolist()
        seconds /= ctx.world_size
        return {
            "epoch": epoch + 1,
            "global_step": self.step,
            "lr": self.schedule(self.step - 1),
            "train_loss": loss_sum / seen,
            "train_top1": correct / seen,
            "images_per_s": seen / seconds,
            "seconds": seconds,
        }

    def _sync_replicas(self) -> None:
        """Give every process rank 0's BN statistics and EMA, so all evaluate and resume from what rank 0 saves.

        Parameters are already equal (DDP); buffers drift apart within a step (each rank's BN sees its own
        batch, and DDP re-broadcasts rank 0's only at the next forward).
        """
        tensors = list(self.model.buffers()) + list(self.ema.module.state_dict().values())
        distributed.broadcast_from_main(self.ctx, tensors)

    @torch.no_grad()
    def _evaluate(self) -> dict[str, float]:
        """Loss, top-1 and top-k (k = min(5, classes)) of the raw and the EMA weights, in one pass over the data."""
        ctx = self.ctx
        models = {"raw": self.model, "ema": self.ema.module}
        for model in models.values():
            model.eval()
        k = min(5, self.spec.num_classes)
        sums = torch.zeros(len(models), 3, dtype=torch.float64, device=ctx.device)  # loss, top-1 hits, top-k hits
        count = torch.zeros(1, dtype=torch.float64, device=ctx.device)
        autocast = (torch.autocast(ctx.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else contextlib.nullcontext())
        for images, labels in tqdm(self.val_loader, desc="eval", leave=False, disable=not self.show, file=sys.stderr):
            self._check_batch(images, labels)
            images = images.to(ctx.device, non_blocking=True, memory_format=self.memory_format)
            labels = labels.to(ctx.device, non_blocking=True)
            for row, model in enumerate(models.values()):
                with autocast:
                    logits = model(images)
                logits = logits.float()
                hits = logits.topk(k, dim=1).indices == labels[:, None]
                sums[row, 0] += F.cross_entropy(logits, labels, reduction="sum").double()
                sums[row, 1] += hits[:, 0].sum()
                sums[row, 2] += hits.any(dim=1).sum()
            count += labels.shape[0]
        totals = distributed.all_reduce_sum(ctx, torch.cat([sums.flatten(), count])).tolist()
        seen = totals[-1]
        result = {}
        for row, name in enumerate(models):
            loss_sum, top1, topk = totals[row * 3: row * 3 + 3]
            result.update({f"{name}_loss": loss_sum / seen, f"{name}_top1": top1 / seen, f"{name}_top5": topk / seen})
        return result

    # --- checkpoints and results ----------------------------------------------------------
    def _meta(self, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(),
            "data_fingerprint": self.fingerprint,
            "recipe": self.recipe.to_dict(),
            "epoch": self.epoch,
            "global_step": self.step,
            "steps_per_epoch": getattr(self, "steps_per_epoch", None),
            "world_size": self.ctx.world_size,
            "finished": self.epoch >= self.recipe.epochs,
            "history": self.history,
            "best": self.best,
            "metrics": metrics if metrics is not None else self._metrics(),
        }

    def _save(self, kind: str, metrics: dict[str, Any] | None = None) -> None:
        """Write checkpoint `kind` from rank 0 (a collective: every rank calls it; `last` gathers RNG states)."""
        states = distributed.gather_json(self.ctx, rng.capture()) if kind == "last" else None
        if self.ctx.is_main:
            meta = self._meta(metrics)
            tensors = _prefixed(self.model.state_dict(), "model") | _prefixed(self.ema.state_dict(), "ema")
            if kind == "last":
                optimizer_tensors, meta["optimizer"] = flatten_optimizer(self.optimizer, self.param_names)
                tensors |= _prefixed(optimizer_tensors, "optimizer")
                meta["grad_scaler"] = self.scaler.state_dict() if self.scaler.is_enabled() else None
                meta["rng"] = states
            try:
                save_checkpoint(self.out, kind, meta, tensors)
            except OSError as error:
                raise SpecError(f"cannot write the {kind} checkpoint to {self.out}: {error.strerror or error}") from None
        distributed.barrier(self.ctx)

    def _metrics(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        keys = ("ema_top1", "ema_top5", "ema_loss", "raw_top1", "raw_top5", "raw_loss", "train_loss", "train_top1", "images_per_s")
        metrics: dict[str, Any] = {key: last.get(key) for key in keys}
        metrics.update(
            epochs=self.epoch,
            global_step=self.step,
            best_epoch=self.best["epoch"] if self.best else None,
            best_ema_top1=self.best["ema_top1"] if self.best else None,
            out_dir=str(self.out),
        )
        return metrics


def _summary(entry: dict[str, Any], epochs: int) -> str:
    """One line per epoch: what the bars showed, plus validation."""
    line = (f"epoch {entry['epoch']}/{epochs}  step {entry['global_step']}  lr {entry['lr']:.3g}  "
            f"loss {entry['train_loss']:.4f}  train top-1 {entry['train_top1']:.1%}")
    if "ema_top1" in entry:
        line += (f"  val top-1 {entry['ema_top1']:.1%} (raw {entry['raw_top1']:.1%})  top-5 {entry['ema_top5']:.1%}  "
                 f"val loss {entry['ema_loss']:.4f}")
    return line + f"  {entry['images_per_s']:.0f} img/s  {entry['seconds']:.1f} s"
