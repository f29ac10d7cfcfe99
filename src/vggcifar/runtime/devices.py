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
        VggCifarError: CUDA asked for but not available, a GPU index beyond those PyTorch sees,
            or any other device string.
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
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise VggCifarError(f"--device {name}: there is no GPU {dev.index} here (PyTorch sees "
                            f"{n}: cuda:0{'' if n == 1 else f' to cuda:{n - 1}'}); use --device "
                            "cuda or auto")
    return dev


def _cpuinfo(field: str) -> str | None:
    """The value of the first ``field`` line of ``/proc/cpuinfo`` (the project's one reader of
    it; ``field`` is matched whole, so ``model`` is not ``model name``); None where there is
    none to read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip().lower() == field:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str] | None:
    """The x86 CPU feature flags of ``/proc/cpuinfo``; None where there are none to read."""
    flags = _cpuinfo("flags")
    return None if flags is None else set(flags.split())


def cpu_family() -> int | None:
    """The x86 ``cpu family`` number (AMD: 25 = Zen 3/4, 26 = Zen 5); None where unknown."""
    fam = _cpuinfo("cpu family")
    return int(fam) if fam and fam.isdigit() else None


def cpu_model() -> str | None:
    """The CPU's model name from ``/proc/cpuinfo`` with its x86 family and model numbers, e.g.
    ``"AMD EPYC (family 26, model 2)"``: virtual machines often show only a generic name, and
    two CPUs of the same name can differ twice in speed. None where there is none to read."""
    name = _cpuinfo("model name") or None
    fam, model = _cpuinfo("cpu family"), _cpuinfo("model")
    if name and fam and model:
        return f"{name} (family {fam}, model {model})"
    return name


def cpu_kind(flags: set[str] | None, family: int | None = None, vendor: str | None = None
             ) -> str:
    """What a CPU's bf16 training speed depends on: ``"amx"`` (AMX tiles, ``amx_bf16``),
    ``"zen5"`` (AVX512-BF16 on AMD's family 26, whose AVX-512 units are a full 512 bits wide),
    ``"avx512_bf16"`` (bf16 dot products, e.g. Zen 4's AVX-512 in two 256-bit halves) or
    ``"other"``. ``flags``: :func:`cpu_flags`; ``family``: :func:`cpu_family`; ``vendor``: the
    ``vendor_id`` (``"AuthenticAMD"``, ``"GenuineIntel"``). On this project's
    2-core machines VGG16 trains at about 412 (amx), 365 (zen5) and 194 (avx512_bf16) images/s."""
    flags = flags or set()
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" not in flags:
        return "other"
    return "zen5" if vendor == "AuthenticAMD" and family == 26 else "avx512_bf16"


def local_cpu_kind() -> str:
    """:func:`cpu_kind` of this machine."""
    return cpu_kind(cpu_flags(), cpu_family(), _cpuinfo("vendor_id"))
