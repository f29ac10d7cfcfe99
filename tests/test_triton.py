"""`vgg-export --triton DIR`: the Triton model repository, validated structurally (config.pbtxt
parsed back and compared with the ONNX graph). No Triton server runs here."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
from click.testing import CliRunner

from vggcifar.errors import VggCifarError
from vggcifar.export import triton as T
from vggcifar.export.cli import main

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]


@pytest.fixture(scope="module")
def repo(tiny_checkpoint, tmp_path_factory):
    """``vgg-export tiny --triton DIR`` run once through the CLI."""
    base = tmp_path_factory.mktemp("triton")
    res = CliRunner().invoke(main, ["--model", str(tiny_checkpoint), "--triton", str(base / "repo"),
                                    "--out", str(base / "exp"), "--max-batch", "64",
                                    "--exporter", "torchscript", "--quiet"])
    assert res.exit_code == 0, res.output
    return base, res


def test_cli_writes_a_valid_repository(repo, tiny_checkpoint):
    base, res = repo
    name = tiny_checkpoint.parent.name  # the run folder's name
    model_dir = base / "repo" / name
    assert sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*")) == [
        "1", "1/model.onnx", "config.pbtxt", "labels.txt"]
    assert "Triton repo" in res.stdout and "overall: PASS" in res.stdout
    assert T.validate_model_dir(model_dir, CLASSES) == []
    # The repository's model is the fp32 export itself.
    fp32 = (base / "exp" / "model.onnx").read_bytes()
    assert (model_dir / "1" / "model.onnx").read_bytes() == fp32
    report = json.loads((base / "exp" / "parity.json").read_text())
    entry = next(e for e in report["formats"] if e["format"] == "triton")
    assert entry["status"] == "PASS" and entry["structural_problems"] == []
    assert entry["triton_model"] == name
    assert (model_dir / "labels.txt").read_text().splitlines() == CLASSES


def test_config_matches_the_onnx_graph(repo, tiny_checkpoint):
    base, _ = repo
    model_dir = base / "repo" / tiny_checkpoint.parent.name
    cfg = T.parse_pbtxt((model_dir / "config.pbtxt").read_text())
    assert cfg["name"] == [model_dir.name]
    assert cfg["platform"] == ["onnxruntime_onnx"]
    assert cfg["max_batch_size"] == [64]
    g = onnx.load(str(model_dir / "1" / "model.onnx")).graph
    (inp,) = cfg["input"]
    assert inp["name"] == [g.input[0].name] == ["image"]
    assert inp["data_type"] == ["TYPE_FP32"] and inp["dims"] == [3, 32, 32]
    outs = {o["name"][0]: o for o in cfg["output"]}
    assert set(outs) == {o.name for o in g.output} == {"logits", "probabilities"}
    for o in outs.values():
        assert o["data_type"] == ["TYPE_FP32"] and o["dims"] == [10]
    assert outs["probabilities"]["label_filename"] == ["labels.txt"]
    assert "label_filename" not in outs["logits"]
    db = cfg["dynamic_batching"][0]
    assert db["preferred_batch_size"] == [8, 32, 64]
    assert db["max_queue_delay_microseconds"] == [T.DEFAULT_QUEUE_DELAY_US]


def test_validation_catches_mismatches(repo, tiny_checkpoint, tmp_path):
    base, _ = repo
    src = base / "repo" / tiny_checkpoint.parent.name
    cases = {
        "dims: [ 3, 32, 32 ]": ("dims: [ 3, 64, 64 ]", "dims [3, 64, 64] differ"),
        "data_type: TYPE_FP32": ("data_type: TYPE_FP16", "data_type TYPE_FP16 differs"),
        'name: "image"': ('name: "input"', "input names"),
        'platform: "onnxruntime_onnx"': ('platform: "tensorrt_plan"', "platform"),
        "preferred_batch_size: [ 8, 32, 64 ]": ("preferred_batch_size: [ 8, 512 ]",
                                                "preferred_batch_size"),
        "max_batch_size: 64": ("max_batch_size: 0", "max_batch_size"),
    }
    for i, (old, (new, message)) in enumerate(cases.items()):
        d = tmp_path / str(i) / src.name
        shutil.copytree(src, d)
        cfg = d / "config.pbtxt"
        text = cfg.read_text()
        assert old in text
        cfg.write_text(text.replace(old, new, 1))
        problems = T.validate_model_dir(d, CLASSES, run=False)
        assert any(message in p for p in problems), (old, problems)
    d = tmp_path / "labels" / src.name
    shutil.copytree(src, d)
    (d / "labels.txt").write_text("\n".join(CLASSES[:9]) + "\n")
    assert any("9 labels" in p for p in T.validate_model_dir(d, CLASSES, run=False))
    d = tmp_path / "renamed" / "other"
    shutil.copytree(src, d)
    assert any("folder name" in p for p in T.validate_model_dir(d, run=False))


def test_pbtxt_parser():
    text = """
    # comment
    name: "m"  max_batch_size: 8
    input [ { name: "a" dims: [ 1, -1 ] }, { name: "b", dims: 3 dims: 4 } ]
    dynamic_batching { preferred_batch_size: [ 2 ] max_queue_delay_microseconds: 100 }
    instance_group < kind: KIND_CPU count: 2 >
    flag: true
    """
    cfg = T.parse_pbtxt(text)
    assert cfg["name"] == ["m"] and cfg["max_batch_size"] == [8]
    assert cfg["input"][0] == {"name": ["a"], "dims": [1, -1]}
    assert cfg["input"][1]["dims"] == [3, 4]
    assert cfg["dynamic_batching"][0]["max_queue_delay_microseconds"] == [100]
    assert cfg["instance_group"][0]["kind"] == ["KIND_CPU"]
    assert cfg["flag"] == [True]
    for bad in ('name: "x" }', "input [ { name: ", "x: @"):
        with pytest.raises(VggCifarError):
            T.parse_pbtxt(bad)


def test_model_names_and_bad_options(tiny_checkpoint, tmp_path):
    assert T.triton_model_name("runs/vgg16 e10/best.pt") == "vgg16_e10"
    assert T.triton_model_name("src/vggcifar/weights/vggcifar-default.json") == "vggcifar-default"
    res = CliRunner().invoke(main, ["--model", str(tiny_checkpoint), "--triton",
                                    str(tmp_path / "r"),
                                    "--triton-name", "../evil", "--out", str(tmp_path / "e"),
                                    "--quiet"])
    assert res.exit_code == 2 and "invalid Triton model name" in res.output
    assert not (tmp_path / "e").exists()


def test_rewriting_replaces_the_model_folder(repo, tiny_checkpoint, tmp_path):
    base, _ = repo
    onnx_file = base / "exp" / "model.onnx"
    d1 = T.write_triton_repo(onnx_file, tmp_path, "m", CLASSES, max_batch=4)
    (d1 / "stale.txt").write_text("old")
    d2 = T.write_triton_repo(onnx_file, tmp_path, "m", CLASSES, max_batch=16, preferred=[4, 99])
    assert d1 == d2 and not (d2 / "stale.txt").exists()
    cfg = T.parse_pbtxt((d2 / "config.pbtxt").read_text())
    assert cfg["max_batch_size"] == [16]
    assert cfg["dynamic_batching"][0]["preferred_batch_size"] == [4]
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no staging folder left
    assert T.validate_model_dir(d2, CLASSES) == []
