"""vgg-export refuses options that none of the chosen formats uses (as ultralytics' exporter
does), before loading anything."""

import pytest
from click.testing import CliRunner

from vggcifar.export.cli import main
from vggcifar.export.options import inapplicable_options


@pytest.mark.parametrize("args, message", [
    (["--calib-method", "entropy"], "--calib-method applies only with --int8"),
    (["--calib-images", "64", "--fp16"], "--calib-images applies only with --int8"),
    (["--triton-name", "m"], "--triton-name applies only with --triton"),
    (["--max-batch", "8", "--int8"], "--max-batch applies only with --tensorrt or --triton"),
    (["--parity-images", "5000"], "--parity-images applies only with --data"),
    (["--seed", "-1"], "Invalid value for '--seed'"),  # was a numpy traceback after the load
])
def test_inapplicable_option_is_a_usage_error(args, message, tmp_path):
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_applicable_and_default_options_pass():
    assert inapplicable_options({"--calib-method", "--calib-images"}, ["onnx", "int8"]) == []
    assert inapplicable_options({"--max-batch", "--triton-name"}, ["onnx", "triton"]) == []
    assert inapplicable_options(set(), ["onnx"]) == []  # defaults are never "given"
