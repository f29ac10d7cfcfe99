import pytest
import torch
from torch import nn

import vggcifar
from vggcifar.errors import VggCifarError

# Default (mlp) head: conv stack + 512-512, 512-512, 512-10.
EXPECTED_PARAMS = {"vgg11": 9_756_426, "vgg13": 9_941_322, "vgg16": 15_253_578,
                   "vgg19": 20_565_834}


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("arch", sorted(EXPECTED_PARAMS))
def test_parameter_counts(arch):
    assert n_params(vggcifar.create_model(arch)) == EXPECTED_PARAMS[arch]


def test_vgg16_has_the_studys_parameter_count():
    assert n_params(vggcifar.create_model("vgg16", num_classes=10)) == 15_253_578


def test_linear_head_drops_the_two_hidden_layers():
    mlp, lin = vggcifar.create_model("vgg16"), vggcifar.create_model("vgg16", head="linear")
    assert n_params(mlp) - n_params(lin) == 2 * (512 * 512 + 512)
    assert len(lin.classifier) == 1


def test_list_models_and_bad_names():
    assert vggcifar.list_models() == ["vgg11", "vgg13", "vgg16", "vgg19"]
    with pytest.raises(VggCifarError, match="unknown architecture 'vgg17'"):
        vggcifar.create_model("vgg17")
    with pytest.raises(VggCifarError, match="unknown head"):
        vggcifar.create_model("vgg11", head="conv")


def test_layer_structure_follows_the_table():
    m = vggcifar.create_model("vgg16")
    convs = [l for l in m.features if isinstance(l, nn.Conv2d)]
    pools = [l for l in m.features if isinstance(l, nn.MaxPool2d)]
    assert len(convs) == 13 and len(pools) == 5
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    dropouts = [l for l in m.classifier if isinstance(l, nn.Dropout)]
    assert [d.p for d in dropouts] == [0.2, 0.2]


@pytest.mark.parametrize("num_classes", [10, 3, 100])
def test_output_shape_any_number_of_classes(num_classes):
    m = vggcifar.create_model("vgg11", num_classes=num_classes, width=0.25).eval()
    assert m(torch.randn(5, 3, 32, 32)).shape == (5, num_classes)


def test_initialisation_matches_the_study():
    torch.manual_seed(0)
    m = vggcifar.create_model("vgg16")
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):
            fan_in = mod.in_channels * 9
            fan_out = mod.out_channels * 9
            xavier_std = (2.0 / (fan_in + fan_out)) ** 0.5
            assert mod.weight.std().item() == pytest.approx(xavier_std, rel=0.1)
            assert torch.count_nonzero(mod.bias) == 0
        elif isinstance(mod, nn.BatchNorm2d):
            assert torch.all(mod.weight == 1) and torch.all(mod.bias == 0)
        elif isinstance(mod, nn.Linear):
            assert mod.weight.mean().abs().item() < 1e-3
            assert mod.weight.std().item() == pytest.approx(0.01, rel=0.1)
            assert torch.count_nonzero(mod.bias) == 0


# The training paths themselves (patches, dense) are tested in tests/test_conv3x3.py.


def test_vgg_uses_conv3x3_and_keeps_its_state_dict_keys():
    from vggcifar.models.conv3x3 import Conv3x3

    model = vggcifar.create_model("vgg11", width=0.125)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 8 and all(type(m) is Conv3x3 for m in convs)
    assert "features.0.weight" in model.state_dict()
    # a training step with the patch path on the 4x4 and 2x2 maps: finite, same shapes
    model.train()
    out = model(torch.randn(4, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (4, 10) and all(p.grad is not None for p in model.parameters())
