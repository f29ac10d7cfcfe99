"""One convention for the seven commands: every command's --help and --version, the shared
options (--model, --out, --quiet, --json, --top-k), help text on every option, click.Path types,
one-line usage errors, and the time --help takes (torch is imported only when a command runs)."""

from __future__ import annotations

import importlib
import io
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import vggcifar

COMMANDS = {
    "vgg-train": "vggcifar.training.cli",
    "vgg-study": "vggcifar.study.cli",
    "vgg-export": "vggcifar.export.cli",
    "vgg-predict": "vggcifar.serving.cli",
    "vgg-eval": "vggcifar.serving.eval_cli",
    "vgg-demo": "vggcifar.serving.demo_cli",
    "vgg-serve": "vggcifar.serving.serve_cli",
}
READS_A_MODEL = ("vgg-export", "vgg-predict", "vgg-eval", "vgg-demo", "vgg-serve")
WRITES_A_FOLDER = ("vgg-train", "vgg-study", "vgg-export")
HAS_A_RESULT = ("vgg-train", "vgg-study", "vgg-export", "vgg-predict", "vgg-eval")
LISTS_CLASSES = ("vgg-predict", "vgg-demo", "vgg-serve")
# Options and arguments that name a file or folder.
PATH_PARAMS = {"model_path", "out", "data", "data_path", "resume", "triton_dir", "inputs"}
HELP_BUDGET_S = 0.4  # over the interpreter's own start-up (`python -c pass`)


def command_of(name: str) -> click.Command:
    return importlib.import_module(COMMANDS[name]).main


def options_of(name: str) -> dict[str, click.Parameter]:
    """``--long-name -> parameter`` of a command."""
    return {o: p for p in command_of(name).params for o in p.opts if o.startswith("--")}


def argv(name: str) -> list[str]:
    """The installed console script, else the same command through ``python -c``."""
    exe = Path(sys.executable).parent / name
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", f"from {COMMANDS[name]} import main; main(prog_name={name!r})"]


def best_of(cmd: list[str], n: int = 3) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True, timeout=60)
        times.append(time.perf_counter() - t0)
    return min(times)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_and_version_are_fast(name):
    baseline = best_of([sys.executable, "-c", "pass"])
    r = subprocess.run(argv(name) + ["--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith(f"Usage: {name}"), r.stderr
    assert "--version" in r.stdout and "--quiet" in r.stdout
    help_s = best_of(argv(name) + ["--help"])
    assert help_s - baseline < HELP_BUDGET_S, (
        f"{name} --help took {help_s:.2f} s ({baseline:.2f} s for python -c pass)")
    r = subprocess.run(argv(name) + ["--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"{name} (vggcifar {vggcifar.__version__})"


def test_command_modules_do_not_import_torch():
    """The reason --help is fast: nothing a command module imports pulls torch, onnx, gradio."""
    code = ("import sys\n"
            + "".join(f"import {m}\n" for m in COMMANDS.values())
            + "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'gradio', 'numpy') "
              "if m in sys.modules]\n"
              "print(','.join(heavy))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"imported at module level: {r.stdout.strip()}"


@pytest.mark.parametrize("name", COMMANDS)
def test_shared_options(name):
    opts = options_of(name)
    assert "--version" in opts and "--quiet" in opts
    assert ("--model" in opts) == (name in READS_A_MODEL)
    assert ("--json" in opts) == (name in HAS_A_RESULT)
    assert ("--top-k" in opts) == (name in LISTS_CLASSES)
    if name in WRITES_A_FOLDER:
        assert "--out" in opts
    if name in LISTS_CLASSES:
        assert opts["--top-k"].default == 3
    if name in READS_A_MODEL:
        model = opts["--model"]
        assert isinstance(model.type, click.Path) and model.default is None
    assert "--name" not in opts  # vgg-train's --out is the run folder itself


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_has_help_and_paths_are_typed(name):
    cmd = command_of(name)
    assert cmd.help, f"{name} has no description"
    for p in cmd.params:
        if isinstance(p, click.Option):
            assert p.help and p.help.strip(), f"{name} {p.opts[0]} has no help text"
        if p.name in PATH_PARAMS and not getattr(p, "is_flag", False):
            assert isinstance(p.type, click.Path), f"{name} {p.opts[0]} is not a click.Path"


@pytest.mark.parametrize("name", ["vgg-predict", "vgg-eval", "vgg-export"])
def test_usage_errors_are_one_line_naming_the_option(name, tmp_path):
    args = {"vgg-predict": ["x.png"], "vgg-eval": ["--data", str(tmp_path)], "vgg-export": []}
    r = CliRunner().invoke(command_of(name), args[name] + ["--model", str(tmp_path / "no.pt")])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "'--model'" in lines[0]
    assert "does not exist" in lines[0] and r.stdout == ""


def test_export_positional_model_names_model_option(tmp_path):
    r = CliRunner().invoke(command_of("vgg-export"), [str(tmp_path / "best.pt")])
    assert r.exit_code == 2
    assert r.stderr.startswith("error: ") and "--model" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_arch_is_checked_against_the_registry():
    r = CliRunner().invoke(command_of("vgg-train"), ["--arch", "vgg17", "--quiet"])
    assert r.exit_code == 2 and "Invalid value for '--arch'" in r.stderr
    for arch in vggcifar.list_models():  # the help names every registered architecture
        assert arch in command_of("vgg-train").get_help(click.Context(command_of("vgg-train")))


def test_train_out_is_the_run_folder(tmp_path):
    from vggcifar.training.cli import run_folder_options

    assert run_folder_options(str(tmp_path / "runs" / "a"), None) == {
        "out": str(tmp_path / "runs"), "name": "a"}
    assert run_folder_options(None, None) == {"out": "runs", "name": None}
    last = tmp_path / "runs" / "a" / "last.pt"
    assert run_folder_options(None, str(last)) == {"resume": str(last)}
    assert run_folder_options(str(last.parent), str(last)) == {"resume": str(last)}


def test_predict_reads_an_image_from_stdin(tiny_checkpoint):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 32), (200, 30, 30)).save(buf, "PNG")
    cmd = command_of("vgg-predict")
    r = CliRunner().invoke(cmd, ["-", "--model", str(tiny_checkpoint), "--json", "--quiet",
                                 "--backend", "torch"], input=buf.getvalue())
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)
    assert row["file"] == "-" and row["label"] and len(row["top_k"]) == 3
    assert r.stderr == ""  # --quiet
    r = CliRunner().invoke(cmd, ["-", "--model", str(tiny_checkpoint), "--backend", "torch"],
                           input=b"not an image")
    assert r.exit_code == 1 and "error: -:" in r.stderr


def test_busy_port_names_the_option():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        for name in ("vgg-demo", "vgg-serve"):
            r = CliRunner().invoke(command_of(name), ["--port", str(port)])
            assert r.exit_code == 2, r.output
            assert "--port" in r.stderr and "server_port" not in r.output


@pytest.mark.parametrize("package", ["vggcifar", "vggcifar.serving", "vggcifar.export",
                                     "vggcifar.training", "vggcifar.study"])
def test_lazy_package_exports_resolve(package):
    """The packages import their public names on first use; every one of them must resolve."""
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"
    assert set(module.__all__) <= set(dir(module))


def test_a_closed_stdout_is_not_reported_as_a_bug():
    # `vgg-predict DIR | head -1`: the reader leaves; that was "internal error: BrokenPipeError"
    code = ("import click\nfrom vggcifar.cli_common import user_errors\n"
            "@click.command()\n@user_errors\ndef cmd():\n"
            "    for i in range(200_000):\n        print(f'line {i}')\ncmd()\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    assert p.stdout.readline() == b"line 0\n"
    p.stdout.close()
    _, err = p.communicate(timeout=60)
    assert p.returncode == 1 and b"internal error" not in err and b"Traceback" not in err, err


@pytest.mark.parametrize("name, args, said", [
    ("vgg-serve", ["--max-file-size", "inf"], "not a finite number"),
    ("vgg-serve", ["--max-request-size", "nan"], "not a finite number"),
    ("vgg-serve", ["--max-wait-ms", "nan"], "not a finite number"),
    ("vgg-demo", ["--max-file-size", "inf"], "not a finite number"),
    ("vgg-serve", ["--max-file-size", "10", "--max-request-size", "1"], "below --max-file-size"),
    ("vgg-serve", ["--queue-size", "16", "--max-files", "64"], "above --queue-size 16"),
    ("vgg-serve", ["--no-demo", "--demo-concurrency", "4"], "--no-demo leaves out"),
])
def test_server_limits_that_cannot_hold_are_refused_before_the_model_loads(name, args, said,
                                                                          tmp_path):
    # "inf" was an OverflowError traceback after the model had loaded; the contradictions
    # were quietly replaced by other limits.
    model = tmp_path / "not-a-model.pt"  # never read: the refusal comes first
    model.write_text("x")
    port = ["--port", "0"] if name == "vgg-serve" else []  # any free port, were it reached
    r = CliRunner().invoke(command_of(name), args + ["--model", str(model), *port])
    assert r.exit_code == 2 and said in r.stderr, r.output
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output


def test_a_request_limit_alone_lowers_the_default_file_limit(tmp_path):
    model = tmp_path / "not-a-model.pt"
    model.write_text("x")
    r = CliRunner().invoke(command_of("vgg-serve"), ["--max-request-size", "5", "--model",
                                                     str(model), "--port", "0"])
    assert "below --max-file-size" not in r.output  # it went on, to the model (not one)
    assert r.exit_code == 2 and "not a PyTorch file" in r.stderr, r.output


def test_server_library_refuses_non_finite_limits():
    from vggcifar.errors import VggCifarError
    from vggcifar.serving.batching import DynamicBatcher
    from vggcifar.serving.demo import mb_to_bytes
    from vggcifar.serving.http_api import create_app

    for bad in (float("inf"), float("nan"), -1.0, True):
        with pytest.raises(VggCifarError):
            mb_to_bytes(bad)
        with pytest.raises(VggCifarError):
            create_app(None, max_file_mb=bad)
    with pytest.raises(ValueError):
        DynamicBatcher(lambda x: x, max_wait_ms=float("nan"))
    assert mb_to_bytes(0.5) == 2**19
