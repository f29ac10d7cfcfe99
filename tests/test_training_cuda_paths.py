"""Code paths that matter on a GPU, covered on the CPU: bf16 autocast and its automatic choice,
the bf16 device loader, torch.compile in the trainer and its fallback (forward and backward),
evaluation with the eager module, --save-every, best.pt before the final test evaluation."""

import json

import pytest
import torch

from vggcifar.checkpoint_file import read_checkpoint
from vggcifar.data import DeviceLoader
from vggcifar.preprocessing import CIFAR10_MEAN, CIFAR10_STD
from vggcifar.training import TrainConfig, train
from vggcifar.training import config as C
from vggcifar.training import trainer as T

CPU = torch.device("cpu")


def tiny(data, out, **kw):
    base = dict(arch="vgg11", width=0.125, head="linear", split=1.0, epochs=1, steps=4, lr=0.05,
                data=str(data), out=str(out), device="cpu", progress=False, seed=0, tta=False,
                batch_size=32)
    base.update(kw)
    return TrainConfig(**base)


# ---------------------------------------------------------------------- the bf16 choice
@pytest.mark.parametrize("onednn, flags, expected", [
    (True, {"avx512f", "avx512_bf16"}, True),
    (True, {"avx512f", "amx_bf16"}, True),
    (True, None, True),                    # no /proc/cpuinfo flags (e.g. Arm): trust oneDNN
    (True, {"avx512f", "avx512bw"}, False),  # AVX512 without bf16: oneDNN would only emulate it
    (False, {"avx512_bf16"}, False),
    (None, {"avx2", "avx512_bf16"}, True),  # private check missing: documented fallback
    (None, {"avx2"}, False),
    (None, None, False),
])
def test_cpu_bf16_choice_mocked(monkeypatch, onednn, flags, expected):
    monkeypatch.setattr(C, "_mkldnn_bf16", lambda: onednn)
    monkeypatch.setattr(C, "_cpu_flags", lambda: flags)
    ok, why = C.cpu_bf16_support()
    assert ok is expected and why
    amp, reason = C.resolve_amp(None, CPU)
    assert amp is expected and reason.startswith("default on CPU")
    # Explicit flags win whatever the CPU can do.
    assert C.resolve_amp(True, CPU) == (True, "--amp given")
    assert C.resolve_amp(False, CPU) == (False, "--no-amp given")


def test_bf16_check_survives_a_failing_private_operator(monkeypatch):
    class Broken:
        def __getattr__(self, name):
            raise RuntimeError("no such operator")

    monkeypatch.setattr(torch.ops, "mkldnn", Broken(), raising=False)
    assert C._mkldnn_bf16() is None
    ok, why = C.cpu_bf16_support()  # the fallback answers
    assert isinstance(ok, bool) and why


def test_amp_on_cuda_by_default_and_off_when_asked():
    assert C.resolve_amp(None, torch.device("cuda")) == (True, "default on CUDA")
    assert C.resolve_amp(False, torch.device("cuda"))[0] is False


@pytest.mark.parametrize("native", [True, False])
def test_config_json_records_the_amp_choice(cifar_batches, tmp_path, monkeypatch, native):
    monkeypatch.setattr(C, "cpu_bf16_support", lambda: (native, "mocked"))
    s = train(tiny(cifar_batches, tmp_path, name="amp", steps=2))
    cfg = json.loads((tmp_path / "amp" / "config.json").read_text())
    assert cfg["amp"] is native and cfg["resolved"]["amp"] is native
    assert cfg["resolved"]["amp_reason"] == "default on CPU: mocked"
    assert s["amp"] is native


# ---------------------------------------------------------------------- bf16 loader
@pytest.mark.parametrize("train_mode", [True, False])
def test_device_loader_in_bf16_matches_fp32(train_mode):
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (300,), generator=g)
    kw = dict(train=train_mode, mean=CIFAR10_MEAN, std=CIFAR10_STD, channels_last=True, seed=3)
    a = list(DeviceLoader(imgs, labels, 64, dtype=torch.float32, **kw))
    b = list(DeviceLoader(imgs, labels, 64, dtype=torch.bfloat16, **kw))
    assert len(a) == len(b) > 1
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xb.dtype == torch.bfloat16 and xa.dtype == torch.float32
        assert xb.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(ya, yb)
        # Same images, crops and flips; values within bf16 rounding (8 significant bits, and
        # the bf16 scale/shift constants) of the fp32 batch.
        assert torch.allclose(xb.float(), xa, rtol=2 ** -6, atol=2 ** -6)
        assert (xb.float() - xa).abs().max() > 0  # really rounded, not fp32 in disguise


# ---------------------------------------------------------------------- torch.compile
def _inductor_works() -> bool:
    try:
        return bool(torch.compile(lambda x: x * 2 + 1)(torch.ones(3)).eq(3).all())
    except Exception:  # noqa: BLE001 - no C++ compiler or similar: the fallback is what runs
        return False


def test_amp_and_compile_train_a_tiny_model(cifar_batches, tmp_path, monkeypatch):
    monkeypatch.delenv("VGGCIFAR_COMPILE_BACKEND", raising=False)
    s = train(tiny(cifar_batches, tmp_path, name="compiled", amp=True, compile=True, steps=3,
                   split=0.8, val_size=64))
    assert s["steps"] == 3 and 0 <= s["test_accuracy"] <= 1 and s["amp"] is True
    assert s["best_val_accuracy"] is not None
    if _inductor_works():
        assert s["compile"] == "compiled"
    else:
        assert s["compile"].startswith("fell back to eager")


class _FakeCompiled(torch.nn.Module):
    """What the monkeypatched torch.compile returns: fails in forward or in backward, or works
    and counts its calls by mode."""

    def __init__(self, model, fail):
        super().__init__()
        self.model, self.fail = model, fail
        self.calls = {"train": 0, "eval": 0}

    def forward(self, x):
        self.calls["train" if self.model.training else "eval"] += 1
        if self.fail == "forward":
            raise RuntimeError("inductor exploded in forward")
        out = self.model(x)
        return _RaiseInBackward.apply(out) if self.fail == "backward" else out


class _RaiseInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("inductor exploded compiling the backward graph")


def _fake_compile(monkeypatch, fail):
    made = []

    def compile_(model, *a, **kw):
        made.append(_FakeCompiled(model, fail))
        return made[-1]

    monkeypatch.setattr(torch, "compile", compile_)
    return made


@pytest.fixture(scope="module")
def eager_run(cifar_batches, tmp_path_factory):
    """The reference: the same tiny run that never tried to compile."""
    out = tmp_path_factory.mktemp("eager")
    return out / "eager", train(tiny(cifar_batches, out, name="eager", dropout=0.5, head="mlp"))


@pytest.mark.parametrize("fail", ["forward", "backward"])
def test_compile_failure_falls_back_and_redoes_the_step(cifar_batches, tmp_path, monkeypatch,
                                                        fail, eager_run):
    eager_dir, eager = eager_run
    made = _fake_compile(monkeypatch, fail)
    s = train(tiny(cifar_batches, tmp_path, name=f"fail-{fail}", dropout=0.5, head="mlp",
                   compile=True))
    assert len(made) == 1 and made[0].calls["train"] == 1  # tried once, then eager
    assert s["compile"].startswith("fell back to eager: RuntimeError: inductor exploded")
    assert s["steps"] == eager["steps"] == 4
    # The failed attempt left no trace: BatchNorm statistics, dropout RNG and weights are
    # exactly those of a run that never tried to compile.
    a = read_checkpoint(eager_dir / "best.pt")["state_dict"]
    b = read_checkpoint(tmp_path / f"fail-{fail}" / "best.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_evaluation_uses_the_eager_module(cifar_batches, tmp_path, monkeypatch):
    made = _fake_compile(monkeypatch, fail=None)
    s = train(tiny(cifar_batches, tmp_path, name="evalmode", compile=True, split=0.8,
                   val_size=64, epochs=2, steps=None, tta=True, batch_size=128))
    assert s["compile"] == "compiled" and s["best_val_accuracy"] is not None
    assert made[0].calls["train"] > 0 and made[0].calls["eval"] == 0


# ---------------------------------------------------------------------- checkpoints
def test_save_every_and_best_before_the_test_evaluation(cifar_batches, tmp_path, monkeypatch):
    saved, best_seen = [], []
    real_save, real_eval = T.save_checkpoint, T.evaluate

    def save(ckpt, path):
        saved.append((path.name, ckpt["epoch"]))
        return real_save(ckpt, path)

    def evaluate(model, loader, *a, **kw):
        best_seen.append((tmp_path / "every" / "best.pt").exists())
        return real_eval(model, loader, *a, **kw)

    monkeypatch.setattr(T, "save_checkpoint", save)
    monkeypatch.setattr(T, "evaluate", evaluate)
    s = train(tiny(cifar_batches, tmp_path, name="every", epochs=5, steps=None, save_every=2,
                   batch_size=256))
    assert s["epochs"] == 5
    assert [e for name, e in saved if name == "last.pt"] == [2, 4, 5]
    # --split 1: best.pt is on disk before the (only) test evaluation starts.
    assert best_seen and all(best_seen)
    assert read_checkpoint(tmp_path / "every" / "last.pt")["epoch"] == 5


def test_old_configs_resume_with_the_old_behaviour():
    old = TrainConfig.from_dict({"arch": "vgg16", "amp": True, "split": 1.0, "epochs": 60})
    assert old.save_every == 1 and old.amp is True
    with pytest.raises(Exception, match="save-every"):
        TrainConfig(save_every=0).validate()
