"""Training options: one dataclass, saved with every run and checkpoint."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING

from ..errors import VggCifarError
from ..runtime.devices import cpu_flags as _cpu_flags  # a module name, so tests can stub it

if TYPE_CHECKING:
    import torch

# torch, the data and the model registry are imported inside the functions that use them: the
# command-line tools read this module's defaults and choices for `--help` without torch.

SCHEDULES = ("onecycle", "cosine", "step", "linear")
# Model options with their own TrainConfig fields (and vgg-train options); they go to the
# architectures whose builder takes them. Other options go in ``TrainConfig.model_kwargs``.
COMMON_MODEL_OPTIONS = ("head", "width", "dropout")
LOADERS = ("device", "classic")
# Options that --resume may change (the rest come from the interrupted run, so that it ends as an
# uninterrupted one would): how often last.pt is written, and two that only change the update
# from here on. SGD keeps the same momentum buffer with and without Nesterov, and an average
# spanning a few epochs can start late in a run and end up the same.
RESUME_OPTIONS = ("save_every", "ema", "nesterov")


@dataclass
class TrainConfig:
    """Every option of a training run. Zero means "choose automatically" for ``batch_size``,
    ``lr`` and ``val_every``; ``None`` means "automatic" for ``amp`` (see :func:`resolve_amp`:
    on for CUDA and for CPUs with native bf16) and ``channels_last`` (on). ``save_every`` writes
    ``last.pt`` every N epochs (and always after the last one). ``ema`` is the per-step decay
    of an exponential moving average of the weights, which is then what is evaluated and saved
    (0: off). ``resume_overrides`` names the options (of :data:`RESUME_OPTIONS`) that replace
    the interrupted run's when resuming; ``save_every`` and ``ema`` also do so whenever they
    differ from their defaults. The model is
    ``create_model(arch, num_classes, **self.model_options())``: ``head``, ``width`` and
    ``dropout`` where the architecture takes them, plus ``model_kwargs`` (other options of
    registered architectures)."""

    arch: str = "vgg16"
    head: str = "mlp"
    width: float = 1.0
    dropout: float = 0.2
    split: float = 0.9
    val_size: int = 5000
    val_every: int = 0
    # The full-training-set recipe's length (docs/recipe.md): on the proxies, doubling the
    # schedule gained 7 points and no other option moved beyond seed noise.
    epochs: int = 60
    steps: int | None = None
    batch_size: int = 0
    lr: float = 0.0
    momentum: float = 0.9
    # The recipe's (docs/recipe.md): +2.1 and +3.2 points on the proxies, paired by seed.
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup: float = 0.2
    label_smoothing: float = 0.1
    # Recipe candidates of issue 20 (off by default until the proxies show they beat the noise):
    # Cutout (a square of this many pixels set to the mean colour, anywhere in each training
    # image, DeVries & Taylor 2017; 0 = off) and weight decay on BatchNorm weights and biases.
    cutout: int = 0
    wd_norm_bias: bool = True
    tta: bool = True
    data: str = "data/cifar10"
    download: bool = True
    loader: str = "device"
    workers: int = 2
    device: str = "auto"
    amp: bool | None = None
    channels_last: bool | None = None
    compile: bool = False
    sync_bn: bool = False
    seed: int = 0
    name: str | None = None
    out: str = "runs"
    resume: str | None = None
    eval_batch_size: int = 1000
    progress: bool = True
    save_every: int = 1
    ema: float = 0.0
    resume_overrides: list = field(default_factory=list)
    model_kwargs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def resumed(self, saved: dict) -> "TrainConfig":
        """The options of the interrupted run (``saved``, its checkpoint's config), so the result
        matches an uninterrupted one; from this invocation only where to resume from, progress,
        device, ``--data`` when given, and the :data:`RESUME_OPTIONS` changed on the command
        line."""
        out = TrainConfig.from_dict(saved)
        out.resume, out.progress, out.device = self.resume, self.progress, self.device
        out.data = self.data if self.data != TrainConfig.data else out.data
        changed = set(self.resume_overrides) | {
            o for o in ("save_every", "ema") if getattr(self, o) != getattr(TrainConfig, o)}
        for o in RESUME_OPTIONS:
            if o in changed:
                setattr(out, o, getattr(self, o))
        return out

    def model_options(self) -> dict:
        """The keyword arguments of ``create_model(self.arch, ...)``, complete and validated:
        the common options the architecture takes (:data:`COMMON_MODEL_OPTIONS`), then
        ``model_kwargs``.

        Raises:
            VggCifarError: unknown architecture, or an option it refuses.
        """
        from ..models import model_entry

        entry = model_entry(self.arch)
        common = {k: getattr(self, k) for k in COMMON_MODEL_OPTIONS if k in entry.defaults}
        return entry.resolve({**common, **(self.model_kwargs or {})})

    def validate(self) -> None:
        """Raise :class:`VggCifarError` for an option no run could use."""
        try:
            self._validate()
        except TypeError as e:  # a value of the wrong type, from a damaged file
            raise VggCifarError(f"an option has a value of the wrong type ({e})") from None

    def _validate(self) -> None:
        from ..data.splits import check_fraction

        self.model_options()
        check_fraction(self.split)
        if self.schedule not in SCHEDULES:
            raise VggCifarError(f"unknown schedule {self.schedule!r}; choose one of: "
                                f"{', '.join(SCHEDULES)}")
        if self.loader not in LOADERS:
            raise VggCifarError(f"unknown loader {self.loader!r}; choose one of: {', '.join(LOADERS)}")
        if self.epochs < 1 and not self.steps:
            raise VggCifarError(f"epochs must be >= 1, got {self.epochs}")
        if self.steps is not None and self.steps < 1:
            raise VggCifarError(f"steps must be >= 1, got {self.steps}")
        if self.save_every < 1:
            raise VggCifarError(f"save-every must be >= 1 (epochs), got {self.save_every}")
        for name in ("batch_size", "val_size", "val_every", "workers"):
            if getattr(self, name) < 0:
                raise VggCifarError(f"{name.replace('_', '-')} must be >= 0")
        numbers = ("lr", "weight_decay", "momentum", "label_smoothing")
        if not all(math.isfinite(getattr(self, n)) for n in numbers):  # NaN would train on NaN
            raise VggCifarError("lr, weight decay, momentum and label smoothing must be finite "
                                "numbers")
        if self.lr < 0 or self.weight_decay < 0 or not (0 <= self.label_smoothing < 1):
            raise VggCifarError("lr and weight decay must be >= 0 and label smoothing in [0, 1)")
        # torch takes any momentum >= 0, but from 1 on the update never forgets a gradient.
        if not 0 <= self.momentum < 1:
            raise VggCifarError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and self.momentum == 0:
            raise VggCifarError("Nesterov momentum (on by default) needs a momentum > 0; pass "
                                "--no-nesterov to train with momentum 0")
        # What torch's generators take; vggcifar.data.loader folds its derived seeds into it.
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not (
                -2**63 <= self.seed < 2**64):
            raise VggCifarError(f"seed must be a whole number from -2**63 to 2**64 - 1, got "
                                f"{str(self.seed)[:40]}")
        bad = [o for o in self.resume_overrides if o not in RESUME_OPTIONS]
        if bad:
            raise VggCifarError(f"--resume cannot change {', '.join(bad)} (only "
                                f"{', '.join(RESUME_OPTIONS)})")
        if not 0 <= self.ema < 1:
            raise VggCifarError(f"ema must be a decay in [0, 1) (0 = off), got {self.ema}")
        if not 0 <= self.cutout <= 32:
            raise VggCifarError(f"cutout must be a size in pixels in [0, 32] (0 = off), got "
                                f"{self.cutout}")
        if self.cutout and self.loader != "device":
            raise VggCifarError("--cutout needs the device loader (--loader device, the default)")
        if not 0 <= self.warmup < 1:
            raise VggCifarError(f"warmup must be a fraction in [0, 1), got {self.warmup}")


def _mkldnn_bf16() -> bool | None:
    """oneDNN's own check, ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``; None where that
    private operator is missing or fails."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - private API: any failure means "ask the fallback"
        return None


def cpu_bf16_support() -> tuple[bool, str]:
    """Whether this CPU runs bf16 natively, so that bf16 autocast is faster than fp32 (1.8x for
    VGG16 training on the 2-core AVX512-BF16 EPYC), with how that was found out.

    1. oneDNN's own check, ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``: its bf16 kernels
       run on this CPU (x86 with AVX512BW/VL/DQ, or Arm with BF16).
    2. On x86 that check also accepts AVX512 CPUs that only emulate bf16 (slower than fp32), so
       where ``/proc/cpuinfo`` lists flags, one of ``avx512_bf16`` or ``amx_bf16`` must be there.
    3. Documented fallback when the private operator is missing or fails: oneDNN available
       (``torch.backends.mkldnn.is_available()``) and one of those two flags listed; anything
       else (no flags to read, no oneDNN) means "not native".
    """
    flags = _cpu_flags()
    native = sorted((flags or set()) & {"avx512_bf16", "amx_bf16"})
    onednn = _mkldnn_bf16()
    if onednn is not None:
        if not onednn:
            return False, "oneDNN reports no bf16 support on this CPU"
        if flags is not None and not native:
            return False, ("oneDNN supports bf16 here but only emulated (no avx512_bf16/amx_bf16 "
                           "CPU flag): slower than fp32")
        return True, ("oneDNN reports native bf16" +
                      (f" ({', '.join(native)})" if native else ""))
    import torch

    try:
        mkldnn = bool(torch.backends.mkldnn.is_available())
    except Exception:  # noqa: BLE001
        mkldnn = False
    if mkldnn and native:
        return True, f"oneDNN available and the CPU lists {', '.join(native)}"
    why = "oneDNN unavailable" if not mkldnn else "no avx512_bf16/amx_bf16 CPU flag"
    return False, f"no native bf16 on this CPU ({why})"


def resolve_amp(amp: bool | None, device: torch.device) -> tuple[bool, str]:
    """Decide bf16 autocast: ``(use it, why)``.

    An explicit ``--amp``/``--no-amp`` (True/False) wins. ``None`` (the default) means: on for
    CUDA; on for a CPU that runs bf16 natively (:func:`cpu_bf16_support`; about 1.8x fp32 for
    VGG16 training on an AVX512-BF16 CPU, same accuracy); off elsewhere (emulated bf16 is slower
    than fp32).
    """
    if amp is not None:
        return bool(amp), f"--{'' if amp else 'no-'}amp given"
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return True, "default on CUDA"
    if device.type == "cpu":
        ok, why = cpu_bf16_support()
        return ok, f"default on CPU: {why}"
    return False, f"default off on {device.type}"


def auto_batch_size(n_train: int, device: torch.device) -> int:
    """Largest power of two <= n_train / 16 (at least 16 steps per epoch), within [32, 512] on
    CUDA and [32, 128] on CPU, where bigger batches bring no speed. (Batch 16 trained the 1% split
    worse than batch 32.)"""
    cap = 512 if device.type == "cuda" else 128
    b = 2 ** int(math.floor(math.log2(max(1, n_train // 16))))
    return int(min(cap, max(32, b)))


def auto_lr(batch_size: int) -> float:
    """Peak learning rate scaled linearly from 0.1 at batch 128, capped at 0.4.

    Measured on VGG16 with 1% of CIFAR-10 (batch 32, 40 epochs, CPU): LR 0.025 (this rule) reached
    24.5% validation accuracy after 20 epochs, LR 0.1 only 18% after 25, and batch 16 at LR 0.035
    21% after 35: small splits want the small, linearly scaled rate."""
    return min(0.4, 0.1 * batch_size / 128)
