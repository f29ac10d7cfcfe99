"""Parity checks: exported models against the PyTorch checkpoint (eval mode, fp32, CPU).

A *runner* is any callable ``[N, 3, 32, 32]`` float32 numpy array (RGB in [0, 1]) ->
``[N, C]`` float32 logits. The reference runner applies the checkpoint's normalisation in PyTorch;
exported models carry it in their graph, so the comparison also checks the in-graph
normalisation.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import VggCifarError
from ..preprocessing import Preprocessing, normalize, uint8_to_unit
from ..runtime.contract import INPUT_NAME, LOGITS, ModelFileError
from ..runtime.onnx import CUDA, TENSORRT, ort_session
from .options import PARITY_IMAGES, RANDOM_IMAGES

Runner = Callable[[np.ndarray], np.ndarray]
BATCH = 256


@dataclass(frozen=True)
class Tolerance:
    """Pass criteria for one precision.

    ``max_abs_diff``: bound on the largest absolute logit difference (None: not checked);
    ``min_agreement``: fraction of inputs whose top-1 class matches the checkpoint's;
    ``max_accuracy_drop``: test-accuracy loss in percentage points (only with real images).
    """

    max_abs_diff: float | None
    min_agreement: float
    max_accuracy_drop: float | None = None


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs_diff=1e-4, min_agreement=1.0),
    "fp16": Tolerance(max_abs_diff=None, min_agreement=0.995),
    "int8": Tolerance(max_abs_diff=None, min_agreement=0.98, max_accuracy_drop=1.0),
}


@dataclass
class ParityInputs:
    """The inputs every exported file is compared on.

    ``random``: ``[R, 3, S, S]`` float32 uniform in [0, 1] (seeded); ``test``: ``[T, 3, S, S]``
    float32 real test images scaled to [0, 1] and ``test_labels`` ``[T]`` int64, or None without
    ``--data``.
    """

    random: np.ndarray
    test: np.ndarray | None = None
    test_labels: np.ndarray | None = None

    def sets(self):
        """``(name, images, labels)`` for each available input set."""
        out = [("random", self.random, None)]
        if self.test is not None:
            out.append(("test", self.test, self.test_labels))
        return out


def random_inputs(n: int = RANDOM_IMAGES, size: int = 32, seed: int = 0) -> np.ndarray:
    """``[n, 3, size, size]`` float32 uniform in [0, 1], reproducible."""
    return np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32)


def sample_indices(n_total: int, n: int, seed: int) -> np.ndarray:
    """``min(n, n_total)`` sorted distinct indices drawn with ``seed``. Sampling (not the first
    ``n``) matters: image-folder test sets are ordered by class."""
    n = min(int(n), int(n_total))
    return np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False))


def make_parity_inputs(data=None, *, n_random: int = RANDOM_IMAGES,
                       n_test: int = PARITY_IMAGES, size: int = 32, seed: int = 0) -> ParityInputs:
    """Random inputs plus, when ``data`` (a :class:`vggcifar.data.CifarData`) is given, ``n_test``
    test images sampled with ``seed``."""
    pi = ParityInputs(random=random_inputs(n_random, size, seed))
    if data is not None and n_test > 0:
        idx = sample_indices(len(data.test_y), n_test, seed)
        pi.test = uint8_to_unit(data.test_x[torch.from_numpy(idx)])
        pi.test_labels = data.test_y[torch.from_numpy(idx)].numpy()
    return pi


def run_batched(runner: Runner, x: np.ndarray, batch_size: int = BATCH, desc: str | None = None,
                progress: bool = False) -> np.ndarray:
    """Apply ``runner`` to ``x`` ``[N, ...]`` in batches; returns the concatenated ``[N, C]``."""
    from tqdm.auto import tqdm

    starts = range(0, len(x), batch_size)
    outs = [runner(np.ascontiguousarray(x[i:i + batch_size]))
            for i in tqdm(starts, desc=desc, leave=False, disable=not progress, unit="batch")]
    return np.concatenate(outs, axis=0).astype(np.float32, copy=False)


def torch_runner(model: torch.nn.Module, preproc: Preprocessing) -> Runner:
    """The reference: ``model`` in eval mode on CPU, fp32, fed ``normalize(x)``."""
    model = model.float().eval().cpu()

    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        t = normalize(torch.from_numpy(x), preproc.mean, preproc.std)
        return model(t).float().numpy()

    return run


# ---------------------------------------------------------------------- onnxruntime sessions
def ort_runner(sess) -> Runner:
    """Runner over an onnxruntime session of an exported file (first output = logits)."""
    def run(x: np.ndarray) -> np.ndarray:
        return sess.run([LOGITS], {INPUT_NAME: x})[0]

    return run


def gpu_ort_sessions(path: str | os.PathLike, *, precision: str,
                     trt_cache_dir: str | os.PathLike | None = None) -> list[tuple[str, object]]:
    """``[(runtime name, session)]`` for the GPU providers that really work here: CUDA (TF32
    off, so fp32 parity is meaningful) and, for fp32/fp16 files, TensorRT with an engine cache
    under ``trt_cache_dir``. Empty on machines without a usable GPU."""
    import onnxruntime as ort

    if not torch.cuda.is_available():
        return []  # avoids onnxruntime's loud provider-library load errors on CPU machines
    out = []
    avail = ort.get_available_providers()
    if CUDA in avail:
        sess = _working(path, CUDA, {"use_tf32": 0})
        if sess is not None:
            out.append(("ort-cuda", sess))
    # QDQ int8 models need TensorRT's explicit-quantization mode, which the EP only enables
    # with trt_int8_enable on TensorRT 10; checked through the CUDA provider instead.
    if TENSORRT in avail and precision in ("fp32", "fp16") and trt_cache_dir:
        Path(trt_cache_dir).mkdir(parents=True, exist_ok=True)
        opts = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(trt_cache_dir),
                "trt_timing_cache_enable": True, "trt_timing_cache_path": str(trt_cache_dir),
                "trt_fp16_enable": precision == "fp16"}
        sess = _working(path, TENSORRT, opts)
        if sess is not None:
            out.append(("ort-tensorrt", sess))
    return out


def _working(path, provider: str, options: dict):
    """A session of ``path`` really running on ``provider``, or None: onnxruntime falls back
    to CPU silently, and a provider can load and then fail on the first run."""
    try:
        sess, active = ort_session(path, provider, options=options)
    except ModelFileError:  # loads on CPU (checked before): the provider failed to load it
        return None
    if active != provider:
        return None
    try:
        shape = sess.get_inputs()[0].shape
        size = shape[-1] if isinstance(shape[-1], int) else 32
        sess.run(None, {INPUT_NAME: np.zeros((1, 3, size, size), np.float32)})
        return sess
    except Exception:  # noqa: BLE001 - any failure means this runtime does not work here
        return None


# ---------------------------------------------------------------------- figures and checks
def compare(ref: np.ndarray, out: np.ndarray, labels: np.ndarray | None = None) -> dict:
    """Parity figures of ``out`` ``[N, C]`` logits against ``ref`` ``[N, C]``.

    Returns ``{"n", "max_abs_diff", "mean_abs_diff", "agreement" (fraction of equal top-1),
    "accuracy_reference", "accuracy"}`` (accuracies are fractions, None without ``labels``).
    """
    if ref.shape != out.shape:
        raise ValueError(f"logit shapes differ: reference {ref.shape}, exported {out.shape}")
    d = np.abs(ref.astype(np.float64) - out.astype(np.float64))
    top_ref, top_out = ref.argmax(1), out.argmax(1)
    fig = {"n": int(len(ref)), "max_abs_diff": float(d.max()) if d.size else 0.0,
           "mean_abs_diff": float(d.mean()) if d.size else 0.0,
           "agreement": float((top_ref == top_out).mean()) if len(ref) else 1.0,
           "accuracy_reference": None, "accuracy": None}
    if not all(math.isfinite(fig[k]) for k in ("max_abs_diff", "mean_abs_diff")):
        fig["max_abs_diff"] = fig["mean_abs_diff"] = float("inf")  # NaN/inf outputs fail
    if labels is not None:
        fig["accuracy_reference"] = float((top_ref == labels).mean())
        fig["accuracy"] = float((top_out == labels).mean())
    return fig


def checked_sets(precision: str, has_test: bool) -> tuple[str, ...]:
    """Which input sets the tolerances apply to. fp32 must match everywhere. The agreement and
    accuracy bounds of fp16/int8 are about real images: on random noise the top-2 logits are
    often nearly tied, so reduced precision flips them without meaning anything. Without real
    images, random inputs are all there is, so they are checked."""
    if precision == "fp32":
        return ("random", "test") if has_test else ("random",)
    return ("test",) if has_test else ("random",)


def failures(fig: dict, precision: str) -> list[str]:
    """Reasons ``fig`` (from :func:`compare`) breaks the tolerance of ``precision``; empty = pass."""
    tol = TOLERANCES[precision]
    bad = []
    if tol.max_abs_diff is not None and not fig["max_abs_diff"] <= tol.max_abs_diff:
        bad.append(f"max |diff| {fig['max_abs_diff']:.3g} > {tol.max_abs_diff:g}")
    if not fig["agreement"] >= tol.min_agreement:
        bad.append(f"top-1 agreement {fig['agreement']:.2%} < {tol.min_agreement:.1%}")
    if tol.max_accuracy_drop is not None and fig["accuracy"] is not None:
        drop = 100.0 * (fig["accuracy_reference"] - fig["accuracy"])
        if drop > tol.max_accuracy_drop:
            bad.append(f"accuracy drop {drop:.2f} points > {tol.max_accuracy_drop:g}")
    return bad


def parity_rows(runner: Runner, reference: dict[str, np.ndarray], inputs: ParityInputs, *,
                precision: str, runtime: str, batch_size: int = BATCH,
                progress: bool = False) -> list[dict]:
    """Compare ``runner`` with the reference logits on every input set.

    Args:
        reference: ``{"random": [R, C], "test": [T, C]}`` reference logits (see
            :func:`reference_logits`).
    Returns:
        one dict per input set: ``runtime``, ``inputs``, the :func:`compare` figures,
        ``checked`` (whether the tolerance applies) and ``failures``.
    """
    rows = []
    checked = checked_sets(precision, inputs.test is not None)
    for name, x, labels in inputs.sets():
        out = run_batched(runner, x, batch_size, desc=f"{runtime} {name}", progress=progress)
        fig = compare(reference[name], out, labels)
        row = {"runtime": runtime, "inputs": name, **fig, "checked": name in checked}
        row["failures"] = failures(fig, precision) if row["checked"] else []
        rows.append(row)
    return rows


def reference_logits(model: torch.nn.Module, preproc: Preprocessing, inputs: ParityInputs,
                     progress: bool = False) -> dict[str, np.ndarray]:
    """The checkpoint's logits on every input set: ``{name: [N, C] float32}``."""
    run = torch_runner(model, preproc)
    return {name: run_batched(run, x, desc=f"pytorch {name}", progress=progress)
            for name, x, _ in inputs.sets()}


def tolerances_dict() -> dict:
    """The tolerance table, JSON-able (for parity.json)."""
    return {k: asdict(v) for k, v in TOLERANCES.items()}


def check_classes(data_classes, class_names) -> None:
    """Raise :class:`VggCifarError` when the data's class order differs from the model's (labels
    would be compared with the wrong outputs)."""
    if tuple(data_classes) != tuple(class_names):
        raise VggCifarError(f"the data's classes {list(data_classes)} differ from the model's "
                            f"{list(class_names)}; pass the data the model was trained on")
