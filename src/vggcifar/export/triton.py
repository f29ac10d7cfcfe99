"""A Triton Inference Server model repository for an exported ONNX model.

``vgg-export MODEL --triton DIR`` writes::

    DIR/<model name>/config.pbtxt     platform "onnxruntime_onnx", dynamic batching
    DIR/<model name>/labels.txt       class names, one per line (label_filename of probabilities)
    DIR/<model name>/1/model.onnx     the fp32 export

The inputs and outputs in ``config.pbtxt`` (names, data types, dims) are read from the ONNX graph
itself, never typed by hand; :func:`validate_model_dir` parses the written file back (with
:func:`parse_pbtxt`, a small parser for the protobuf text format subset used here: the Triton
``ModelConfig`` proto is not available to ``google.protobuf.text_format``) and checks it against
the graph. No Triton server runs in this project's environment, so the repository is validated
structurally only; serving it is ``tritonserver --model-repository DIR``.

The model takes ``image`` float32 ``[N, 3, S, S]`` RGB in [0, 1] (normalisation is inside the
graph) and returns ``logits`` and ``probabilities`` ``[N, num_classes]``; the probabilities are
softmax(logits / T) with the model's temperature ``T`` inside the graph (metadata
``temperature``), so Triton's clients get calibrated probabilities with nothing to configure.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from ..errors import VggCifarError
from ..io import make_shared
from ..runtime.contract import PROBABILITIES
from .options import MAX_BATCH

PLATFORM = "onnxruntime_onnx"
CONFIG_NAME = "config.pbtxt"
LABELS_NAME = "labels.txt"
MODEL_FILE = "model.onnx"
MODEL_VERSION = "1"  # Triton serves the highest numbered folder; each export replaces the model
LABEL_OUTPUT = PROBABILITIES
DEFAULT_PREFERRED = (8, 32, 64)
DEFAULT_QUEUE_DELAY_US = 2000

# ONNX TensorProto element type name -> Triton data type.
_TRITON_TYPES = {
    "FLOAT": "TYPE_FP32", "FLOAT16": "TYPE_FP16", "DOUBLE": "TYPE_FP64", "BFLOAT16": "TYPE_BF16",
    "INT8": "TYPE_INT8", "INT16": "TYPE_INT16", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64",
    "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16", "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64", "BOOL": "TYPE_BOOL", "STRING": "TYPE_STRING",
}


def triton_model_name(checkpoint: str | os.PathLike) -> str:
    """A Triton model name for a checkpoint: the run folder's name for ``<run>/best.pt``, the
    file's stem otherwise (``vggcifar-default`` for the shipped model); characters outside
    ``[A-Za-z0-9_.-]`` become ``_``."""
    p = Path(checkpoint)
    raw = p.parent.name if p.stem in ("best", "last") and p.parent.name else p.stem
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", raw).strip("._") or "vggcifar"
    return name


def check_model_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name or ""):
        raise VggCifarError(f"invalid Triton model name {name!r}: use letters, digits, '_', '.', "
                            "'-' (it is also a folder name)")
    return name


# ------------------------------------------------------------------------------ the ONNX side

def onnx_tensors(path: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """``(inputs, outputs)`` of an ONNX graph, each ``{name, data_type, dims}`` with the Triton
    data type and the full dims (``-1`` for a dynamic axis). Initializers are not inputs."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}

    def spec(v) -> dict:
        t = v.type.tensor_type
        onnx_type = onnx.TensorProto.DataType.Name(t.elem_type)
        if onnx_type not in _TRITON_TYPES:
            raise VggCifarError(f"{path}: tensor {v.name} has type {onnx_type}, which Triton "
                                "does not support")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        return {"name": v.name, "data_type": _TRITON_TYPES[onnx_type], "dims": dims}

    inputs = [spec(v) for v in model.graph.input if v.name not in inits]
    outputs = [spec(v) for v in model.graph.output]
    return inputs, outputs


# ------------------------------------------------------------------------------ writing

def _dims(d) -> str:
    return "[ " + ", ".join(str(int(x)) for x in d) + " ]"


def render_config(name: str, inputs: list[dict], outputs: list[dict], *, max_batch: int,
                  preferred: list[int], max_queue_delay_us: int,
                  label_output: str | None = LABEL_OUTPUT, comment: str = "") -> str:
    """``config.pbtxt`` text. ``inputs``/``outputs`` as from :func:`onnx_tensors` (full dims,
    batch axis first: Triton's ``dims`` leave it out because ``max_batch_size`` > 0)."""
    def tensor(t: dict, label: bool) -> str:
        lines = ["  {", f'    name: "{t["name"]}"', f"    data_type: {t['data_type']}",
                 f"    dims: {_dims(t['dims'][1:])}"]
        if label:
            lines.append(f'    label_filename: "{LABELS_NAME}"')
        return "\n".join(lines + ["  }"])

    text = [f"# {line}" for line in comment.splitlines()]
    text += [f'name: "{name}"', f'platform: "{PLATFORM}"', f"max_batch_size: {int(max_batch)}",
             "input ["]
    text.append(",\n".join(tensor(t, False) for t in inputs))
    text += ["]", "output ["]
    text.append(",\n".join(tensor(t, t["name"] == label_output) for t in outputs))
    text += ["]", "dynamic_batching {", f"  preferred_batch_size: {_dims(preferred)}",
             f"  max_queue_delay_microseconds: {int(max_queue_delay_us)}", "}"]
    return "\n".join(text) + "\n"


def preferred_sizes(max_batch: int, preferred=None) -> list[int]:
    """The preferred batch sizes, within ``1..max_batch`` (default: 8, 32, 64 that fit, else
    ``max_batch``)."""
    sizes = sorted({int(s) for s in (preferred or DEFAULT_PREFERRED) if 1 <= int(s) <= max_batch})
    return sizes or [max_batch]


def write_triton_repo(onnx_path: str | os.PathLike, repo: str | os.PathLike, name: str,
                      class_names, *, max_batch: int = MAX_BATCH, preferred=None,
                      comment: str = "") -> Path:
    """Write ``repo/<name>/`` (config, labels, ``<MODEL_VERSION>/model.onnx``) and return
    that folder.

    The folder is assembled next to its final place and swapped in at the end: an existing
    model of the same name is replaced as a whole, never mixed with the new files.

    Raises:
        VggCifarError: bad name or batch settings, an ONNX graph Triton cannot batch (its first
            axis is not dynamic), or an unwritable ``repo``.
    """
    check_model_name(name)
    if max_batch < 1:
        raise VggCifarError(f"the Triton max_batch_size must be at least 1, got {max_batch}")
    inputs, outputs = onnx_tensors(onnx_path)
    for t in inputs + outputs:
        if not t["dims"] or t["dims"][0] != -1:
            raise VggCifarError(f"{onnx_path}: {t['name']} has no dynamic batch axis "
                                f"(dims {t['dims']}); Triton's dynamic batching needs one")
    class_names = [str(c) for c in class_names]
    repo = Path(repo)
    try:
        repo.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".vgg-triton-", dir=repo))
    except OSError as e:
        raise VggCifarError(f"cannot write the Triton repository {repo}: {e.strerror or e}") from e
    try:
        model_dir = stage / name
        (model_dir / MODEL_VERSION).mkdir(parents=True)
        shutil.copyfile(onnx_path, model_dir / MODEL_VERSION / MODEL_FILE)
        (model_dir / LABELS_NAME).write_text("\n".join(class_names) + "\n")
        label_output = LABEL_OUTPUT if any(o["name"] == LABEL_OUTPUT for o in outputs) else None
        (model_dir / CONFIG_NAME).write_text(render_config(
            name, inputs, outputs, max_batch=max_batch,
            preferred=preferred_sizes(max_batch, preferred),
            max_queue_delay_us=DEFAULT_QUEUE_DELAY_US, label_output=label_output, comment=comment))
        make_shared([model_dir, *model_dir.rglob("*")])  # staged under mkdtemp: owner-only
        final = repo / name
        if final.exists():
            os.replace(final, stage / ".old")
        os.replace(model_dir, final)
        return final
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# ------------------------------------------------------------------------------ reading back

_TOKEN = re.compile(r'\s+|#[^\n]*|(?P<str>"(?:[^"\\]|\\.)*")|(?P<num>-?\d+(?:\.\d+)?)'
                    r"|(?P<id>[A-Za-z_][A-Za-z0-9_]*)|(?P<sym>[{}\[\]:,;<>])")


def _tokens(text: str) -> list[tuple[str, object]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise VggCifarError(f"config.pbtxt: unexpected character {text[pos]!r} at {pos}")
        pos = m.end()
        if m.group("str") is not None:
            out.append(("str", bytes(m.group("str")[1:-1], "utf-8").decode("unicode_escape")))
        elif m.group("num") is not None:
            v = m.group("num")
            out.append(("num", float(v) if "." in v else int(v)))
        elif m.group("id") is not None:
            out.append(("id", m.group("id")))
        elif m.group("sym") is not None:
            out.append(("sym", {"<": "{", ">": "}"}.get(m.group("sym"), m.group("sym"))))
    return out


def parse_pbtxt(text: str) -> dict:
    """Parse protobuf text format (the subset ``config.pbtxt`` files use: scalar fields,
    enums, strings, ``[ ... ]`` lists and nested ``{ ... }`` messages) into
    ``{field: [values]}``: every field maps to the list of its values, messages to dicts.

    Raises:
        VggCifarError: a syntax error.
    """
    toks = _tokens(text)
    pos = 0

    def peek():
        return toks[pos] if pos < len(toks) else ("eof", None)

    def take(kind=None, value=None):
        nonlocal pos
        tok = peek()
        if (kind and tok[0] != kind) or (value is not None and tok[1] != value):
            raise VggCifarError(f"config.pbtxt: expected {value or kind}, found {tok[1]!r}")
        pos += 1
        return tok

    def scalar_or_message():
        tok = peek()
        if tok == ("sym", "{"):
            take()
            msg = message("}")
            take("sym", "}")
            return msg
        if tok[0] in ("str", "num", "id"):
            take()
            if tok[0] == "id" and tok[1] in ("true", "false"):
                return tok[1] == "true"
            return tok[1]
        raise VggCifarError(f"config.pbtxt: expected a value, found {tok[1]!r}")

    def message(end):
        fields: dict[str, list] = {}
        while peek() != ("sym", end) and peek()[0] != "eof":
            key = take("id")[1]
            if peek() == ("sym", ":"):
                take()
            if peek() == ("sym", "["):
                take()
                values = []
                while peek() != ("sym", "]"):
                    values.append(scalar_or_message())
                    if peek() == ("sym", ","):
                        take()
                take("sym", "]")
            else:
                values = [scalar_or_message()]
            fields.setdefault(key, []).extend(values)
            if peek() in (("sym", ","), ("sym", ";")):
                take()
        return fields

    result = message(None)
    if peek()[0] != "eof":
        raise VggCifarError(f"config.pbtxt: unexpected {peek()[1]!r}")
    return result


def _one(msg: dict, key: str, default=None):
    v = msg.get(key)
    return v[-1] if v else default


def validate_model_dir(model_dir: str | os.PathLike, class_names=None,
                       run: bool = True) -> list[str]:
    """Check a Triton model folder written by :func:`write_triton_repo`: ``config.pbtxt``
    parsed back and compared with the ONNX graph (names, data types, dims of every input and
    output; a dynamic batch axis), the platform, batching settings, the labels file (one line
    per class, equal to ``class_names`` when given), and, with ``run``, one onnxruntime call
    on a batch of 2. Returns the problems found (empty: valid)."""
    d = Path(model_dir)
    cfg_path = d / CONFIG_NAME
    if not cfg_path.is_file():
        return [f"{cfg_path} is missing"]
    try:
        cfg = parse_pbtxt(cfg_path.read_text())
    except VggCifarError as e:
        return [str(e)]
    problems, max_batch = _check_header(cfg, d.name)
    versions = sorted(p for p in d.iterdir() if p.is_dir() and p.name.isdigit())
    if not versions:
        return problems + [f"{d} has no numbered version folder"]
    model = versions[-1] / MODEL_FILE
    if not model.is_file():
        return problems + [f"{model} is missing"]
    try:
        import onnx

        onnx.checker.check_model(str(model))
        inputs, outputs = onnx_tensors(model)
    except Exception as e:  # noqa: BLE001 - any reason the file is unusable is a finding
        return problems + [f"{model} is not a valid ONNX model ({str(e).splitlines()[0][:200]})"]
    for kind, graph in (("input", inputs), ("output", outputs)):
        problems += _check_tensors(kind, cfg.get(kind, []), graph, max_batch, d, class_names)
    if not any(_one(t, "label_filename") for t in cfg.get("output", [])):
        problems.append("no output has a label_filename")
    problems += _check_batching(_one(cfg, "dynamic_batching"), max_batch)
    if run and not problems:
        problems += _run_check(model, inputs, outputs)
    return problems


def _check_header(cfg: dict, folder: str) -> tuple[list[str], int]:
    """``(problems, max_batch_size)`` of the name, platform and batch size (0 when invalid)."""
    problems = []
    if _one(cfg, "name") != folder:
        problems.append(f"name {_one(cfg, 'name')!r} differs from the folder name {folder!r}")
    if _one(cfg, "platform") != PLATFORM:
        problems.append(f"platform {_one(cfg, 'platform')!r}, expected {PLATFORM!r}")
    max_batch = _one(cfg, "max_batch_size", 0)
    if not isinstance(max_batch, int) or max_batch < 1:
        problems.append(f"max_batch_size {max_batch!r} must be a positive integer")
        max_batch = 0
    return problems, max_batch


def _check_tensors(kind: str, declared: list, graph: list[dict], max_batch: int, d: Path,
                   class_names) -> list[str]:
    """The config's ``input`` or ``output`` entries against the ONNX graph's tensors: names,
    data types, dims (without the batch axis when batching), and the label files."""
    problems = []
    want = {t["name"]: t for t in graph}
    got = {_one(t, "name"): t for t in declared}
    if set(got) != set(want):
        problems.append(f"{kind} names {sorted(map(str, got))} differ from the ONNX graph's "
                        f"{sorted(want)}")
    for tname in sorted(set(got) & set(want)):
        t, g = got[tname], want[tname]
        if _one(t, "data_type") != g["data_type"]:
            problems.append(f"{kind} {tname}: data_type {_one(t, 'data_type')} differs from "
                            f"the graph's {g['data_type']}")
        if max_batch and (not g["dims"] or g["dims"][0] != -1):
            problems.append(f"{kind} {tname}: the graph's first axis {g['dims'][:1]} is not "
                            "dynamic, but max_batch_size > 0 batches it")
        graph_dims = g["dims"][1:] if max_batch else g["dims"]
        if list(t.get("dims", [])) != graph_dims:
            problems.append(f"{kind} {tname}: dims {list(t.get('dims', []))} differ from the "
                            f"graph's {graph_dims}")
        label_file = _one(t, "label_filename")
        if label_file is not None:
            problems += _check_labels(kind, tname, d / label_file, graph_dims, class_names)
    return problems


def _check_labels(kind: str, tname: str, lp: Path, graph_dims: list, class_names) -> list[str]:
    """A tensor's label file: only on outputs, present, one line per class, in order."""
    if kind != "output":
        return [f"input {tname} has a label_filename"]
    if not lp.is_file():
        return [f"label file {lp} is missing"]
    problems = []
    labels = lp.read_text().splitlines()
    if len(labels) != (graph_dims[-1] if graph_dims else 0):
        problems.append(f"{lp.name} has {len(labels)} labels for {kind} {tname} of "
                        f"dims {graph_dims}")
    if class_names is not None and labels != [str(c) for c in class_names]:
        problems.append(f"{lp.name} does not list the model's classes in order")
    return problems


def _check_batching(db, max_batch: int) -> list[str]:
    """The ``dynamic_batching`` block: present, preferred sizes within 1..max_batch_size, a
    non-negative queue delay."""
    if not isinstance(db, dict):
        return ["dynamic_batching is missing"]
    problems = []
    pref = db.get("preferred_batch_size", [])
    if not pref or any(not isinstance(p, int) or not 1 <= p <= max(max_batch, 1) for p in pref):
        problems.append(f"preferred_batch_size {pref} must lie within 1..{max_batch}")
    delay = _one(db, "max_queue_delay_microseconds", 0)
    if not isinstance(delay, int) or delay < 0:
        problems.append(f"max_queue_delay_microseconds {delay!r} must be >= 0")
    return problems


def _run_check(model: Path, inputs: list[dict], outputs: list[dict]) -> list[str]:
    """One onnxruntime call on a batch of 2: outputs have the declared shapes and are finite."""
    import numpy as np
    import onnxruntime as ort

    if any(t["data_type"] != "TYPE_FP32" for t in inputs):
        return []  # only the float32 exports of this project are run
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {t["name"]: rng.random([2] + [max(1, x) for x in t["dims"][1:]], dtype=np.float32)
            for t in inputs}
    got = sess.run([o["name"] for o in outputs], feed)
    problems = []
    for o, y in zip(outputs, got):
        want = [2] + o["dims"][1:]
        if list(y.shape) != [w if w != -1 else s for w, s in zip(want, y.shape)]:
            problems.append(f"output {o['name']}: shape {list(y.shape)} for a batch of 2, "
                            f"expected {want}")
        elif not np.isfinite(y).all():
            problems.append(f"output {o['name']}: non-finite values")
    return problems
