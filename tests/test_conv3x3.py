"""The CPU training paths of ``Conv3x3`` (vggcifar.models.conv3x3) against ``F.conv2d``: same
outputs and gradients in float64, the same parameters and state_dict, and the plain convolution
wherever the paths must not be used (evaluation, export, other devices)."""

import pytest
import torch
import torch.nn.functional as F

import vggcifar.models.conv3x3 as conv3x3
from vggcifar.models.conv3x3 import Conv3x3, conv3x3_dense, conv3x3_patches

CL = torch.channels_last


def _inputs(size: int, channels_last: bool, bias: bool, cin: int = 6, cout: int = 5):
    torch.manual_seed(size)
    x = torch.randn(3, cin, size, size + (size > 1), dtype=torch.float64)  # also non-square maps
    w = torch.randn(cout, cin, 3, 3, dtype=torch.float64)
    if channels_last:
        x, w = x.contiguous(memory_format=CL), w.contiguous(memory_format=CL)
    b = torch.randn(cout, dtype=torch.float64, requires_grad=True) if bias else None
    return x.requires_grad_(), w.requires_grad_(), b


def _check_exact(fn, x, w, b):
    inputs = tuple(t for t in (x, w, b) if t is not None and t.requires_grad)
    ref = F.conv2d(x, w, b, padding=1)
    g = torch.randn_like(ref)
    grads_ref = torch.autograd.grad(ref, inputs, g)
    out = fn(x, w, b)
    grads = torch.autograd.grad(out, inputs, g)
    assert out.shape == ref.shape and out.is_contiguous(memory_format=CL)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    for a, r in zip(grads, grads_ref):
        assert a.shape == r.shape
        torch.testing.assert_close(a, r, atol=1e-12, rtol=0)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_patch_path_equals_conv2d_with_gradients(size, channels_last, bias):
    _check_exact(conv3x3_patches, *_inputs(size, channels_last, bias))


@pytest.mark.parametrize("size", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_dense_path_equals_conv2d_with_gradients(size, channels_last, bias):
    x, w, b = _inputs(size, channels_last, bias)
    x = x.detach()[..., :size].contiguous(memory_format=CL).requires_grad_()  # 1x1, 2x2
    _check_exact(conv3x3_dense, x, w, b)
    with pytest.raises(ValueError, match="at most 2x2"):
        conv3x3_dense(torch.zeros(1, 6, 3, 3, dtype=torch.float64), w, b)


def test_first_layer_needs_no_input_gradient():
    """The image does not require a gradient: only the weight and bias get one."""
    x, w, b = _inputs(4, True, True, cin=3)
    x = x.detach()
    _check_exact(conv3x3_patches, x, w, b)


@pytest.mark.parametrize("fn", [conv3x3_patches, conv3x3_dense])
def test_paths_compute_in_bf16_under_cpu_autocast(fn):
    """Like F.conv2d under autocast: a bf16 output, fp32 gradients for the fp32 parameters."""
    torch.manual_seed(0)
    conv = Conv3x3(8, 16)
    x = torch.randn(4, 8, 2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn(x, conv.weight, conv.bias)
        ref = F.conv2d(x, conv.weight, conv.bias, padding=1)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), atol=0.05, rtol=0.02)
    out.float().sum().backward()
    assert conv.weight.grad.dtype == torch.float32 and conv.bias.grad.dtype == torch.float32


@pytest.mark.parametrize("size,path", [(1, "dense"), (2, "dense"), (4, "patches"),
                                       (8, "onednn"), (32, "onednn")])
def test_module_takes_its_path_only_when_training_on_the_cpu(size, path, monkeypatch):
    assert conv3x3.train_path(size, size) == path
    calls = []
    for name in ("conv3x3_patches", "conv3x3_dense"):
        real = getattr(conv3x3, name)
        monkeypatch.setattr(conv3x3, name,
                            lambda *a, _n=name, _r=real: calls.append(_n) or _r(*a))
    conv = Conv3x3(6, 5).double()
    assert set(conv.state_dict()) == {"weight", "bias"}
    x = torch.randn(2, 6, size, size, dtype=torch.float64)
    ref = F.conv2d(x, conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(conv.train()(x), ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(conv.eval()(x), ref, atol=1e-12, rtol=0)
    assert calls == ([] if path == "onednn" else [f"conv3x3_{path}"])
    monkeypatch.setattr(conv3x3, "PATCH_MAX_PIXELS", 0)  # the benchmarks' all-oneDNN switch
    assert conv3x3.train_path(size, size) == "onednn"


def test_vgg_training_step_matches_the_plain_convolutions_in_float64():
    """A whole (narrow) VGG16 in training mode: the loss and every parameter's gradient equal
    those of the same model with every convolution on F.conv2d."""
    import vggcifar

    torch.manual_seed(0)
    model = vggcifar.create_model("vgg16", width=0.0625).double().train()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])

    def grads():
        torch.manual_seed(1)  # same dropout masks
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss, g = grads()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    old = conv3x3.PATCH_MAX_PIXELS
    try:
        conv3x3.PATCH_MAX_PIXELS = 0
        model.load_state_dict(state)  # the BatchNorm running stats moved during the first pass
        loss_ref, g_ref = grads()
    finally:
        conv3x3.PATCH_MAX_PIXELS = old
    torch.testing.assert_close(loss, loss_ref, atol=1e-12, rtol=0)
    for a, r in zip(g, g_ref):
        torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-10)
