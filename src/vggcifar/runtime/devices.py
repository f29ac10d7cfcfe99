"""Which torch device a ``--device`` value means: the one resolver for training, the study and
serving. torch is imported when a device is resolved, so importing this module is cheap."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import VggCifarError

if TYPE_CHECKING:
    import torch

DEVICE_HELP = "use auto, cpu or cuda[:N]"


def resolve_device(name: str | None) -> torch.device:
    """``None``/``""``/``auto`` -> CUDA when PyTorch sees a GPU, else CPU; otherwise the named
    device (``cpu``, ``cuda``, ``cuda:N``; case-insensitive).

    Raises:
        VggCifarError: CUDA asked for but not available, or any other device string.
    """
    import torch

    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise VggCifarError(f"unknown device {name!r}; {DEVICE_HELP}") from e
    if dev.type not in ("cpu", "cuda"):
        raise VggCifarError(f"device {name} is not supported; {DEVICE_HELP}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VggCifarError(f"--device {name}: CUDA is not available here (no CUDA GPU is "
                            "visible to PyTorch); use --device cpu or auto")
    return dev


def _cpuinfo(field: str) -> str | None:
    """The value of the first ``field`` line of ``/proc/cpuinfo`` (the project's one reader of
    it); None where there is none to read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str] | None:
    """The x86 CPU feature flags of ``/proc/cpuinfo``; None where there are none to read."""
    flags = _cpuinfo("flags")
    return None if flags is None else set(flags.split())


def cpu_model() -> str | None:
    """The CPU's model name from ``/proc/cpuinfo`` (e.g. ``"AMD EPYC"``); None where there is
    none to read."""
    return _cpuinfo("model name") or None


def cpu_kind(flags: set[str] | None) -> str:
    """What a CPU's bf16 training speed depends on, from its ``/proc/cpuinfo`` flags: ``"amx"``
    (AMX tiles, ``amx_bf16``), ``"avx512_bf16"`` (bf16 dot products only) or ``"other"``. The
    project's two 2-core machines, one of each of the first two kinds, differ 2.1 times in VGG16
    training speed."""
    flags = flags or set()
    if "amx_bf16" in flags:
        return "amx"
    return "avx512_bf16" if "avx512_bf16" in flags else "other"
