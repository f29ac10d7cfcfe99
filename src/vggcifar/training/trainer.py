"""The one trainer behind `vgg-train`, `vgg-study` and the benchmarks.

``VGGCIFAR_COMPILE_BACKEND`` (environment) picks the torch.compile backend of ``--compile``
(default ``inductor``); the GPU acceptance script's dry run uses ``eager`` to exercise the
compile code paths on a CPU in seconds.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..checkpoint import check_architecture, make_checkpoint, save_checkpoint, unwrap_model
from ..checkpoint_file import read_checkpoint
from ..data import DeviceLoader, classic_loader, load_cifar10, stratified_split
from ..errors import VggCifarError
from ..io import FolderLock, atomic_write, check_writable, open_regular, remove_empty_dirs
from ..models import create_model, is_finite_number
from ..preprocessing import CIFAR10_MEAN, CIFAR10_STD, Preprocessing
from . import distributed
from ..runtime.devices import resolve_device
from .config import TrainConfig
from .ema import WeightEMA
from .environment import peak_memory, versions
from .evaluate import evaluate, per_class_accuracy, predict_logits
from .plan import RunPlan, plan_run
from .report import (plot_confusion, plot_curves, plot_samples, table_header, table_row,
                     write_csv)
from .schedule import lr_factor
from .step import Precision, first_compiled_step, param_groups, sgd, train_step
from .temperature import fit_run_temperature

def train(config: TrainConfig, *, restart: bool = False) -> dict:
    """Train, select on validation, evaluate on test, and write the run folder.

    Returns the summary dict also written to ``summary.json`` (plus ``run_dir``). Works in a
    single process and under torchrun (DistributedDataParallel). ``config`` is not changed: the
    automatic values are worked out by :func:`vggcifar.training.plan.plan_run` and recorded in
    the run folder (``config.json``, checkpoints).

    A new run refuses a folder that holds a run (:func:`existing_run`); with ``restart`` (a
    study's split that stopped before it could be continued) only a finished or resumable one.
    """
    config.validate()
    device = resolve_device(config.device)
    info, device = distributed.setup(device)
    try:
        return _Run(config, device, info, restart=restart).run()
    finally:
        distributed.teardown(info)


def existing_run(run_dir: Path, restart: bool = False) -> str | None:
    """The file that shows ``run_dir`` holds a run a new one must not overwrite, or None.

    Any of last.pt, summary.json, best.pt, or a metrics.csv with an epoch in it: a finished
    run whose last.pt was deleted, or a ``--copy-results`` copy, has no last.pt. A start
    stopped before its first epoch leaves only config.json (and maybe a header-only
    metrics.csv), which is not a run. ``restart``: only last.pt and summary.json count.
    """
    names = ("last.pt", "summary.json") if restart else ("last.pt", "summary.json", "best.pt")
    found = next((n for n in names if os.path.lexists(run_dir / n)), None)
    if found or restart or not os.path.lexists(run_dir / "metrics.csv"):
        return found
    try:
        with open_regular(run_dir / "metrics.csv") as f:
            lines = f.read(1 << 16).splitlines()
    except (OSError, VggCifarError):  # something planted under that name: keep away from it
        return "metrics.csv"
    return "metrics.csv" if len([ln for ln in lines if ln.strip()]) > 1 else None


def _names(classes) -> str:
    """The first few class names, for a message."""
    return ", ".join(classes[:4]) + (", ..." if len(classes) > 4 else "")


# What finish() reads of the checkpoint's per-epoch rows: numbers (validation ones may be empty).
_METRIC_NUMBERS = ("epoch", "step", "train_loss", "train_acc", "lr", "epoch_time_s",
                   "images_per_s", "peak_mem_mb")


def _check_resume_state(ckpt: dict, where) -> None:
    """Refuse a last.pt whose training state is not what this trainer wrote, before any work:
    a bad value would otherwise surface as a traceback, some only after the training."""
    def bad(what: str):
        raise VggCifarError(f"{where} cannot be resumed: {what}; the file is damaged or was not "
                            "written by vgg-train")

    def count(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    ts = ckpt["training_state"]
    if not isinstance(ts, dict):
        bad("its training state is not a dict")
    if not count(ckpt.get("epoch")) or not count(ts.get("step")):
        bad("its epoch or step is not a whole number")
    if not is_finite_number(ts.get("best_acc")):
        bad("its best validation accuracy is not a number")
    if ts.get("best_epoch") is not None and not count(ts["best_epoch"]):
        bad("its best epoch is not a whole number")
    if not is_finite_number(ts.get("train_time_s", 0.0)):
        bad("its training time is not a number")
    metrics = ckpt.get("metrics") or []
    if not (isinstance(metrics, list) and all(
            isinstance(r, dict) and all(is_finite_number(r.get(k)) for k in _METRIC_NUMBERS)
            and all(r.get(k) is None or is_finite_number(r[k]) for k in ("val_loss", "val_acc"))
            for r in metrics)):
        bad("its metrics are not a list of epoch records")
    for key in ("optimizer", "scheduler"):
        if not isinstance(ts.get(key), dict):
            bad(f"its {key} state is not a dict")
    if not isinstance(ts.get("rng_cpu"), torch.Tensor):
        bad("its random-number state is not a tensor")


class _Run:
    """One training run. ``self.cfg`` is the run's own copy of the options (the caller's object
    is never changed), with the automatic ones resolved after :meth:`setup`; ``self.plan`` holds
    the numbers worked out for it."""

    plan: RunPlan
    # Temperature scaling of the chosen checkpoint, set by finish() (_fit_temperature).
    temperature: float = 1.0
    calibration: dict | None = None
    lock: FolderLock | None = None

    def __init__(self, config: TrainConfig, device: torch.device, info: distributed.DistInfo,
                 restart: bool = False):
        self.t_start = time.perf_counter()
        self.device, self.info = device, info
        self.resume_ckpt = None
        config = replace(config)
        if config.resume:
            where = config.resume
            self.resume_ckpt = ckpt = read_checkpoint(where)
            if "training_state" not in ckpt:
                raise VggCifarError(f"{where} holds no training state; resume from the "
                                    "run's last.pt")
            if not isinstance(ckpt.get("config"), dict):
                raise VggCifarError(f"{where} holds no training options; the file is damaged "
                                    "or was not written by vgg-train")
            try:
                config = config.resumed(ckpt["config"])
                config.validate()
            except (VggCifarError, TypeError, ValueError) as e:
                raise VggCifarError(f"{where} holds options no run can use ({e}); the file is "
                                    "damaged or was not written by vgg-train") from None
            check_architecture(ckpt, where)
            _check_resume_state(ckpt, where)
            # The folder of the file named, a link included: a run resumed through a link to
            # another run's last.pt continues in the link's folder, never in the other run's.
            self.run_dir = Path(where).absolute().parent
            best_epoch = ckpt["training_state"].get("best_epoch")
            if best_epoch is not None and not (self.run_dir / "best.pt").is_file():
                raise VggCifarError(f"{self.run_dir} has no best.pt (the run's best epoch so "
                                    f"far, {best_epoch}), which the run's end evaluates; put it "
                                    "next to last.pt")
        else:
            name = config.name or (f"{config.arch}-split{config.split:g}-"
                                   f"{datetime.now().strftime('%Y%m%d-%H%M%S')}")
            config.name = name
            self.run_dir = Path(config.out) / name
            found = existing_run(self.run_dir, restart)
            if found == "last.pt":
                raise VggCifarError(f"run folder {self.run_dir} already holds a run; continue it "
                                    f"with --resume {self.run_dir / 'last.pt'} or pick another --out")
            if found:
                raise VggCifarError(f"run folder {self.run_dir} already holds a run ({found}; no "
                                    "last.pt to continue it from); pick another --out")
        self.cfg = config
        self.main = info.is_main
        self.created_dirs: list[Path] = []

    def log(self, msg: str) -> None:
        if self.main and self.cfg.progress:
            from tqdm.auto import tqdm
            tqdm.write(msg, file=sys.stderr)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg, dev = self.cfg, self.device
        if self.main:
            # Remember what this run creates: a start that fails during setup removes it
            # again rather than leaving an empty run folder behind.
            self.created_dirs = [d for d in (self.run_dir, *self.run_dir.parents)
                                 if not d.exists()]
            check_writable(self.run_dir, "run folder")
            self.lock = FolderLock(self.run_dir, "run folder")
        torch.manual_seed(cfg.seed)
        # Built (and its options checked) first: a bad option fails before data is loaded.
        self.model_kwargs = cfg.model_options()
        # Rank 0 loads first so that only it downloads data or writes the decoded-image cache.
        if self.main:
            data = load_cifar10(cfg.data, download=cfg.download)
        distributed.barrier(self.info)
        if not self.main:
            data = load_cifar10(cfg.data, download=False, verbose=False)
        self.data = data
        self.classes = data.classes
        self.num_classes = len(data.classes)
        if self.resume_ckpt is not None:
            trained = tuple(self.resume_ckpt["preprocessing"]["class_names"])
            if trained != tuple(data.classes):
                raise VggCifarError(
                    f"--data {cfg.data} has {len(data.classes)} classes ({_names(data.classes)}) "
                    f"but {cfg.resume} was trained on {len(trained)} ({_names(trained)}); resume "
                    "with the run's own data")
        train_idx, val_idx = stratified_split(data.train_y, cfg.split, cfg.seed, cfg.val_size)
        self.n_train, self.n_val = len(train_idx), len(val_idx)
        plan = self.plan = plan_run(cfg, self.n_train, dev, self.info.world_size,
                                    n_val=self.n_val, resumed=self.resume_ckpt is not None)
        self.cfg = cfg = plan.resolve(cfg)
        self.amp_reason = plan.amp_reason
        distributed.check_same_config(self.info, cfg.to_dict())
        self.precision = Precision.for_run(cfg.amp, dev)  # chosen once; every step uses it
        self.amp_dtype = self.precision.amp_dtype
        in_dtype = self.precision.input_dtype
        per_rank = plan.per_rank_batch
        common = dict(mean=CIFAR10_MEAN, std=CIFAR10_STD, device=dev, channels_last=cfg.channels_last,
                      rank=self.info.rank, world_size=self.info.world_size)
        if cfg.loader == "device":
            self.train_loader = DeviceLoader(data.train_x[train_idx], data.train_y[train_idx],
                                             per_rank, train=True, seed=cfg.seed, dtype=in_dtype,
                                             cutout=cfg.cutout, **common)
        else:
            if self.info.enabled:
                raise VggCifarError("--loader classic does not support distributed training; "
                                    "use the default device loader")
            self.train_loader = classic_loader(data.train_x[train_idx], data.train_y[train_idx],
                                               cfg.batch_size, train=True, mean=CIFAR10_MEAN,
                                               std=CIFAR10_STD, workers=cfg.workers, seed=cfg.seed)
        if len(self.train_loader) != plan.steps_per_epoch:  # the plan must describe the loader
            raise RuntimeError(f"the training loader has {len(self.train_loader)} batches per "
                               f"epoch, the plan {plan.steps_per_epoch}")
        eb = max(1, cfg.eval_batch_size // self.info.world_size)
        self.val_loader = (DeviceLoader(data.train_x[val_idx], data.train_y[val_idx], eb,
                                        train=False, **common) if self.n_val else None)
        self.test_loader = DeviceLoader(data.test_x, data.test_y, eb, train=False, **common)
        self.total_steps, self.epochs = plan.total_steps, plan.epochs

        model = create_model(cfg.arch, self.num_classes, **self.model_kwargs).to(dev)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.info.enabled and cfg.sync_bn:
            model = distributed.convert_sync_batchnorm(model, dev)
        self.params = sum(p.numel() for p in model.parameters())
        if self.info.enabled:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[dev.index] if dev.type == "cuda" else None)
        self.model = model
        self.opt = sgd(param_groups(model, cfg.weight_decay, cfg.wd_norm_bias), lr=cfg.lr,
                       momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
        total = self.total_steps
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, total, cfg.schedule, cfg.warmup))
        backend = os.environ.get("VGGCIFAR_COMPILE_BACKEND") or "inductor"
        self.fwd = torch.compile(model, backend=backend) if cfg.compile else model
        self.compile_checked = False
        self.compile_status = (f"requested ({backend}), not yet run" if cfg.compile else "off")
        self.preproc = Preprocessing(CIFAR10_MEAN, CIFAR10_STD, 32, tuple(self.classes))
        self.versions = versions(dev)
        self.start_epoch, self.step, self.best_acc, self.best_epoch = 0, 0, -1.0, None
        self.metrics: list[dict] = []
        self.train_time = 0.0
        # The run's time before this process (earlier segments of a resumed run) and the epochs
        # after which it was resumed: total_time_s is the whole run's, however often it stopped.
        self.time_before, self.resumed_after_epochs = 0.0, []
        self.ema = WeightEMA(unwrap_model(model), cfg.ema) if cfg.ema else None
        if self.resume_ckpt is not None:
            self._restore(self.resume_ckpt)

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are evaluated and saved: the EMA when ``--ema`` is on."""
        return self.ema.module if self.ema is not None else self.model

    def _restore(self, ckpt: dict) -> None:
        try:
            self._load_state(ckpt)
        except (TypeError, ValueError, KeyError, RuntimeError, IndexError,
                AttributeError) as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise VggCifarError(f"{self.cfg.resume} cannot be resumed: its training state does "
                                f"not fit this run ({reason})") from None

    def _load_state(self, ckpt: dict) -> None:
        ts = ckpt["training_state"]
        # With an EMA the checkpoint's state_dict is the average; the live weights ride along.
        unwrap_model(self.model).load_state_dict(ts.get("live_state_dict") or ckpt["state_dict"])
        if self.ema is not None:
            if "ema" in ts:
                self.ema.load_state(ckpt["state_dict"], ts["ema"])
            else:  # --ema switched on at this resume: the average starts from here
                self.ema.load_state(unwrap_model(self.model).state_dict(), {})
        self.opt.load_state_dict(ts["optimizer"])
        for group in self.opt.param_groups:  # the saved groups carry the interrupted run's flags
            group["nesterov"] = bool(self.cfg.nesterov)
            group["fused"], group["foreach"] = True, None  # as step.sgd builds it, whatever saved it
        self.sched.load_state_dict(ts["scheduler"])
        torch.set_rng_state(ts["rng_cpu"])
        if self.device.type == "cuda" and ts.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(ts["rng_cuda"], self.device)
        self.start_epoch, self.step = int(ckpt["epoch"]), int(ts["step"])
        self.best_acc, self.best_epoch = float(ts["best_acc"]), ts.get("best_epoch")
        self.train_time = float(ts.get("train_time_s", 0.0))
        self.metrics = list(ckpt.get("metrics") or [])
        # last.pt files from before run_time_s was recorded: their epochs' own time (what the
        # earlier segments spent starting up is not known, so not counted).
        before = ts.get("run_time_s")
        if isinstance(before, (int, float)) and math.isfinite(before) and before >= 0:
            self.time_before = float(before)
        else:
            self.time_before = sum(float(r.get("epoch_time_s") or 0.0) for r in self.metrics)
        earlier = ts.get("resumed_after_epochs")
        self.resumed_after_epochs = [int(e) for e in earlier if isinstance(e, int)] if isinstance(
            earlier, list) else []
        self.resumed_after_epochs.append(self.start_epoch)
        self.log(f"resuming {self.run_dir} after epoch {self.start_epoch} (step {self.step})")

    def checkpoint(self, epoch: int, training_state: dict | None = None,
                   test_accuracy: float | None = None,
                   test_accuracy_one_view: float | None = None) -> dict:
        c = self.cfg
        return make_checkpoint(
            self.eval_model, arch=c.arch, model_kwargs=self.model_kwargs, num_classes=self.num_classes,
            preprocessing=self.preproc, config=c.to_dict(),
            metrics=self.metrics, epoch=epoch, test_accuracy=test_accuracy,
            test_accuracy_one_view=test_accuracy_one_view, training_state=training_state,
            versions=self.versions, temperature=self.temperature, calibration=self.calibration,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"))

    # ------------------------------------------------------------------ loop
    def train_epoch(self, epoch: int) -> dict:
        cfg, dev = self.cfg, self.device
        self.model.train()
        if isinstance(self.train_loader, DeviceLoader):
            self.train_loader.set_epoch(epoch)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
            start_ev, end_ev = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start_ev.record()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        correct = torch.zeros((), dtype=torch.int64, device=dev)
        seen = torch.zeros((), dtype=torch.int64, device=dev)
        bar = None
        it = self.train_loader
        if self.main and cfg.progress:
            from tqdm.auto import tqdm
            bar = tqdm(it, total=len(self.train_loader), desc=f"epoch {epoch + 1}/{self.epochs}",
                       unit="batch", leave=False, file=sys.stderr, dynamic_ncols=True,
                       disable=None)
            it = bar
        lr_used = self.opt.param_groups[0]["lr"]
        for x, y in it:
            if self.step >= self.total_steps:
                break
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            if cfg.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            lr_used = self.opt.param_groups[0]["lr"]
            logits, loss = self._train_step(x, y)  # includes the optimizer step
            self.sched.step()
            if self.ema is not None:
                self.ema.update()
            self.step += 1
            n = y.numel()
            loss_sum += loss.detach().double() * n
            correct += (logits.detach().argmax(1) == y).sum()
            seen += n
            if bar is not None and self.step % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr_used:.4f}", refresh=False)
        if bar is not None:
            bar.close()
        if dev.type == "cuda":
            end_ev.record()
            torch.cuda.synchronize(dev)
            train_s = start_ev.elapsed_time(end_ev) / 1000
        else:
            train_s = time.perf_counter() - t0
        stats = torch.stack([loss_sum, correct.double(), seen.double()])
        distributed.all_reduce_sum(stats, self.info)
        n_all = max(1.0, float(stats[2]))
        self.train_time += train_s
        return {"train_loss": float(stats[0]) / n_all, "train_acc": float(stats[1]) / n_all,
                "lr": lr_used, "train_time_s": train_s, "images_per_s": n_all / max(train_s, 1e-9),
                "images": int(n_all)}

    def _step(self, fwd, x: torch.Tensor, y: torch.Tensor):
        """One optimisation step of ``fwd`` (:func:`~vggcifar.training.step.train_step`);
        returns ``(logits, loss)``."""
        return train_step(fwd, (x, y), self.opt, self.precision, self.cfg.label_smoothing)

    def _train_step(self, x: torch.Tensor, y: torch.Tensor):
        if self.fwd is self.model or self.compile_checked:
            return self._step(self.fwd, x, y)
        out, self.fwd, self.compile_status = first_compiled_step(
            lambda m: self._step(m, x, y), self.fwd, self.model, self.device, self.log)
        self.compile_checked = True
        return out

    def run(self) -> dict:
        try:
            try:
                self.setup()
            except BaseException:
                self.release()
                remove_empty_dirs(self.created_dirs)
                raise
            return self._train()
        finally:
            self.release()

    def release(self) -> None:
        """Release the run folder's lock (held from setup to the end, by the main rank)."""
        if self.lock is not None:
            self.lock.release()

    def _train(self) -> dict:
        cfg = self.cfg
        if self.main:
            atomic_write(self.run_dir / "config.json", lambda t: Path(t).write_text(json.dumps(
                {**cfg.to_dict(), "resolved": {"epochs": self.epochs, "total_steps": self.total_steps,
                 "val_every": self.plan.val_every, "batch_size": self.plan.batch_size,
                 "per_rank_batch": self.plan.per_rank_batch, "lr": self.plan.lr,
                 "steps_per_epoch": self.plan.steps_per_epoch,
                 "model_kwargs": self.model_kwargs, "train_images": self.n_train,
                 "val_images": self.n_val, "test_images": len(self.data.test_y),
                 "world_size": self.info.world_size, "params": self.params,
                 "data_format": self.data.kind, "data_source": self.data.source,
                 "amp": cfg.amp, "amp_reason": self.amp_reason},
                 "versions": self.versions}, indent=2)))
        self.log(f"vgg-train: {cfg.arch} ({self.params:,} params) on {self.device}"
                 f"{f' x{self.info.world_size} ranks' if self.info.enabled else ''} | train "
                 f"{self.n_train:,} / val {self.n_val:,} / test {len(self.data.test_y):,} images | "
                 f"batch {cfg.batch_size}, lr {cfg.lr:g}, {cfg.schedule}, {self.epochs} epochs "
                 f"({'bf16' if cfg.amp else 'fp32'}: {self.amp_reason}) "
                 f"({self.total_steps} steps) | {self.run_dir}")
        if self.start_epoch < self.epochs:
            self.log(table_header())
        for epoch in range(self.start_epoch, self.epochs):
            t0 = time.perf_counter()
            row = {"epoch": epoch + 1, "step": self.step}
            tr = self.train_epoch(epoch)
            row["step"] = self.step
            row.update({k: tr[k] for k in ("train_loss", "train_acc", "lr")})
            row.update({"val_loss": None, "val_acc": None})
            last = epoch == self.epochs - 1 or self.step >= self.total_steps
            if self.val_loader is not None and ((epoch + 1) % self.plan.val_every == 0 or last):
                # The eager module: the compiled one would recompile for eval mode and batch size.
                v = evaluate(self.eval_model, self.val_loader, self.num_classes,
                             amp_dtype=self.amp_dtype, info=self.info)
                row.update({"val_loss": v["loss"], "val_acc": v["accuracy"]})
            row.update({"epoch_time_s": time.perf_counter() - t0, "train_time_s": tr["train_time_s"],
                        "images_per_s": tr["images_per_s"], **peak_memory(self.device)})
            self.metrics.append(row)
            improved = row["val_acc"] is not None and row["val_acc"] > self.best_acc
            if improved:
                self.best_acc, self.best_epoch = row["val_acc"], epoch + 1
            if self.main:
                self.log(table_row(row))
                write_csv(self.run_dir / "metrics.csv", self.metrics)
                if improved:
                    save_checkpoint(self.checkpoint(epoch + 1), self.run_dir / "best.pt")
                if last or (epoch + 1) % cfg.save_every == 0:
                    save_checkpoint(self.checkpoint(epoch + 1,
                                                    training_state=self._training_state()),
                                    self.run_dir / "last.pt")
            distributed.barrier(self.info)
            if last:
                break
        return self.finish()

    def _training_state(self) -> dict:
        ema = ({"ema": self.ema.state(), "live_state_dict": {
            k: v.detach().cpu().clone() for k, v in unwrap_model(self.model).state_dict().items()}}
               if self.ema is not None else {})
        return {**ema, "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                "step": self.step, "best_acc": self.best_acc, "best_epoch": self.best_epoch,
                "train_time_s": self.train_time, "run_time_s": self.run_time_s(),
                "resumed_after_epochs": self.resumed_after_epochs}

    def run_time_s(self) -> float:
        """Wall time of the whole run so far: this process's plus its earlier segments' (an
        epoch cut short by an interruption is lost, so not counted)."""
        return self.time_before + time.perf_counter() - self.t_start

    # ------------------------------------------------------------------ final evaluation
    def finish(self) -> dict:
        cfg = self.cfg
        final_epoch = len(self.metrics)
        if self.ema is not None:  # from here on the model is the average
            unwrap_model(self.model).load_state_dict(self.ema.module.state_dict())
            self.ema = None
        if self.best_epoch is not None:
            chosen = f"best.pt (epoch {self.best_epoch}, best validation accuracy {self.best_acc:.4f})"
            best = read_checkpoint(self.run_dir / "best.pt")
            unwrap_model(self.model).load_state_dict(best["state_dict"])
        else:
            chosen = f"last epoch ({final_epoch}): no validation set (split 1), so best.pt = last.pt"
            if self.main:  # on disk before the test evaluation, whatever happens to that
                save_checkpoint(self.checkpoint(final_epoch), self.run_dir / "best.pt")
        self.temperature, self.calibration = fit_run_temperature(
            self.model, self.val_loader, amp_dtype=self.amp_dtype, info=self.info, log=self.log)
        distributed.barrier(self.info)
        test = evaluate(self.model, self.test_loader, self.num_classes, amp_dtype=self.amp_dtype,
                        tta=cfg.tta, info=self.info)
        per_class = per_class_accuracy(test["confusion"])
        # Serving classifies one view, so the figure it can promise is the one without TTA.
        one_view = (evaluate(self.model, self.test_loader, self.num_classes,
                             amp_dtype=self.amp_dtype, tta=False, info=self.info)["accuracy"]
                    if cfg.tta else test["accuracy"])
        summary = {
            "test_accuracy": test["accuracy"], "test_accuracy_one_view": one_view,
            "test_loss": test["loss"],
            "per_class_accuracy": dict(zip(self.classes, per_class)),
            "best_val_accuracy": self.best_acc if self.best_epoch is not None else None,
            "checkpoint": chosen, "best_epoch": self.best_epoch or final_epoch,
            "epochs": final_epoch, "steps": self.step, "params": self.params,
            "train_images": self.n_train, "val_images": self.n_val,
            "test_images": test["n"], "batch_size": cfg.batch_size, "lr": cfg.lr, "tta": cfg.tta,
            "total_time_s": self.run_time_s(),
            "resumed_after_epochs": self.resumed_after_epochs,
            "train_time_s": self.train_time,
            "mean_epoch_time_s": (sum(r["epoch_time_s"] for r in self.metrics) / len(self.metrics)
                                  if self.metrics else None),
            "mean_images_per_s": (sum(r["images_per_s"] for r in self.metrics) / len(self.metrics)
                                  if self.metrics else None),
            "peak_memory_mb": max((r["peak_mem_mb"] for r in self.metrics), default=None),
            "peak_reserved_mb": max((r.get("peak_reserved_mb") or 0 for r in self.metrics),
                                    default=None) if self.device.type == "cuda" else None,
            "device": str(self.device), "world_size": self.info.world_size,
            "amp": bool(cfg.amp), "amp_reason": self.amp_reason,
            "compile": self.compile_status,
            "versions": self.versions,
            "temperature": self.temperature, "calibration": self.calibration,
        }
        if self.main:
            self._write_final(test, per_class, summary)
        # Leave together: a rank that tears down its process group while rank 0 is still writing
        # figures can be aborted by gloo when the connection closes under it.
        distributed.barrier(self.info)
        summary["run_dir"] = str(self.run_dir)
        tta = f" with flip TTA, {one_view:.2%} one view" if cfg.tta else ""
        self.log(f"test accuracy {summary['test_accuracy']:.2%}{tta} ({chosen}); "
                 f"total {summary['total_time_s']:.1f}s; run folder {self.run_dir}")
        return summary

    def _write_final(self, test: dict, per_class: list[float], summary: dict) -> None:
        d = self.run_dir
        # best.pt carries its test accuracy so exports and serving can report it.
        save_checkpoint(self.checkpoint(summary["best_epoch"], test_accuracy=test["accuracy"],
                                        test_accuracy_one_view=summary["test_accuracy_one_view"]),
                        d / "best.pt")
        write_csv(d / "per_class.csv", [
            {"class": c, "accuracy": a, "correct": int(test["confusion"][i, i]),
             "total": int(test["confusion"][i].sum())}
            for i, (c, a) in enumerate(zip(self.classes, per_class))])
        plot_curves(self.metrics, d / "curves.png")
        plot_confusion(test["confusion"], self.classes, d / "confusion.png",
                       f"test confusion matrix, accuracy {test['accuracy']:.2%}")
        n = min(32, len(self.data.test_y))
        sel = torch.linspace(0, len(self.data.test_y) - 1, n).long()
        imgs = self.data.test_x[sel]
        x = DeviceLoader(imgs, self.data.test_y[sel], n, train=False, mean=CIFAR10_MEAN,
                         std=CIFAR10_STD, device=self.device,
                         channels_last=self.cfg.channels_last)
        xb, _ = next(iter(x))
        unwrap_model(self.model).eval()
        pred = predict_logits(unwrap_model(self.model), xb, amp_dtype=self.amp_dtype).argmax(1).cpu()
        plot_samples(imgs, self.data.test_y[sel], pred, self.classes, d / "samples.png")
        atomic_write(d / "summary.json", lambda t: Path(t).write_text(json.dumps(summary, indent=2)))
        # config.json was written at the start; the temperature is known only now.
        config = {**json.loads((d / "config.json").read_text()), "calibration": self.calibration}
        atomic_write(d / "config.json", lambda t: Path(t).write_text(json.dumps(config, indent=2)))
