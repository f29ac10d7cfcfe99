"""What a run records about where it ran: software versions, the device, peak memory."""

from __future__ import annotations

import platform
import resource

import torch

from .. import __version__
from ..runtime.devices import cpu_model, local_cpu_kind


def versions(device: torch.device) -> dict:
    """Software and hardware description saved with every run."""
    v = {"vggcifar": __version__, "torch": str(torch.__version__), "python": platform.python_version(),
         "platform": platform.platform(), "device": str(device)}
    try:
        import torchvision
        v["torchvision"] = str(torchvision.__version__)
    except ImportError:
        pass
    if device.type == "cuda":
        v["gpu"] = torch.cuda.get_device_name(device)
        v["cuda"] = str(torch.version.cuda)
    else:
        v["cpu"] = cpu_model() or platform.processor() or platform.machine()
        v["cpu_kind"] = local_cpu_kind()
        v["threads"] = torch.get_num_threads()
    return v


def peak_memory(device: torch.device) -> dict:
    """Peak memory in MB since the last reset: CUDA allocated/reserved, or process RSS on CPU."""
    if device.type == "cuda":
        return {"peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20,
                "peak_reserved_mb": torch.cuda.max_memory_reserved(device) / 2**20}
    return {"peak_mem_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
