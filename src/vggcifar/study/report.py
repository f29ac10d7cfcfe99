"""The study report: ``report.md``, ``report.json`` and ``figures/*.png`` in the study folder,
built only from what the runs wrote to disk (so it can be rebuilt with `vgg-study --report-only`).

The pieces: :mod:`.collect` reads the runs, :mod:`.analysis` turns the numbers into sentences,
:mod:`.figures` draws and :mod:`.markdown` writes ``report.md``.
"""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path

from ..errors import VggCifarError
from ..io import atomic_write
from . import analysis
from .analysis import mixed_machines, pct
from .collect import collect, explicit_command
from .figures import plot_all
from .markdown import markdown
from .presets import REFERENCE

# Session fields shown in the report: the log of each start and resume of the study.
SESSION_KEYS = ("kind", "started", "finished", "in_progress", "command", "wall_time_s",
                "trained", "skipped", "isolate", "split_epochs_changed")


def _device_description(rows: list[dict], hw: dict) -> str:
    dev = rows[0]["device"] if rows else "?"
    v = rows[0]["versions"] if rows else {}
    if str(dev).startswith("cuda"):
        return f"{dev} ({v.get('gpu') or ', '.join(hw.get('gpus', [])) or 'GPU'})"
    threads = v.get("threads") or hw.get("torch_threads")
    machines = mixed_machines(rows)
    if machines:
        cpu = "; ".join(f"{m} for {', '.join(pct(s) for s in splits)}"
                        for m, splits in machines.items())
    else:
        cpu = (rows[0].get("machine") if rows else None) or hw.get("cpu") or v.get("cpu") or "CPU"
    return (f"CPU ({cpu}, {hw.get('logical_cpus', '?')} logical CPUs, {threads} PyTorch threads"
            f"{', no GPU' if not hw.get('gpus') else ''})")


def _session(s: dict) -> dict:
    """A session as the report shows it (older manifests have no ``kind``: the first session
    started the study, the others resumed it)."""
    out = {k: s.get(k) for k in SESSION_KEYS}
    out["estimate_s"] = (s.get("estimate") or {}).get("seconds")
    out["split_epochs_changed"] = _length_changes(s.get("split_epochs_changed"))
    return out


def _length_changes(v) -> dict | None:
    """``split_epochs_changed`` (``{"0.5": [old, new]}``, None = the study's default length)
    with only well-formed entries: a hand-edited or damaged ``study.json`` must not break the
    report."""
    def epochs(x):
        return x is None or (type(x) is int and x > 0)

    if not isinstance(v, dict):
        return None
    out = {}
    for k, pair in v.items():
        try:
            float(k)
        except (TypeError, ValueError):
            continue
        if isinstance(pair, list) and len(pair) == 2 and all(map(epochs, pair)):
            out[k] = pair
    return out or None


def _study(study_dir: Path, manifest: dict, rows: list[dict], hw: dict,
           isolated: bool | None) -> dict:
    """The report's ``study`` section: what was asked, where it ran and how long it took."""
    sessions = manifest.get("sessions", [])
    shown = [_session(s) for s in sessions]
    for i, s in enumerate(shown):
        s["kind"] = s["kind"] or ("start" if i == 0 else "resume")
    return {
        "name": study_dir.name, "created": manifest.get("created"),
        "preset": manifest.get("preset"),
        "splits": manifest["splits"], "min_steps": manifest.get("min_steps", 0),
        "split_epochs": manifest.get("split_epochs") or {},
        "config": manifest["config"], "note": manifest.get("note"),
        "sessions": shown,
        "explicit_command": explicit_command(manifest, out=str(study_dir)),
        "seed": manifest["config"].get("seed"), "device": rows[0]["device"],
        "device_description": _device_description(rows, hw), "hardware": hw,
        "versions": rows[0]["versions"], "isolated": isolated,
        "data_source": rows[0]["data_source"], "data_format": rows[0]["data_format"],
        "dataset": manifest.get("dataset"),
        "wall_time_s": sum(s.get("wall_time_s") or 0 for s in sessions),
        "sum_split_time_s": sum(r["total_time_s"] for r in rows),
    }


def write_report(study_dir: str | os.PathLike) -> dict:
    """Write ``report.md``, ``report.json`` and ``figures/`` for the finished splits of a study.

    Returns the report dict (the content of ``report.json``).

    Raises:
        VggCifarError: no study in ``study_dir``, or no split has finished yet.
    """
    study_dir = Path(study_dir)
    got = collect(study_dir)
    manifest, rows = got["manifest"], got["rows"]
    if not rows:
        raise VggCifarError(f"no split of the study in {study_dir} has finished yet; nothing to "
                            "report")
    sessions = manifest.get("sessions", [])
    hw = next((s["hardware"] for s in reversed(sessions) if s.get("hardware")), {})
    kind = rows[0]["memory_kind"]
    isolated_flags = [r["isolated"] for r in rows if r["isolated"] is not None]
    isolated = all(isolated_flags) if isolated_flags else None
    an = {"accuracy": analysis.accuracy_findings(rows),
          "time": analysis.time_findings(rows, hw.get("logical_cpus")),
          "memory": analysis.memory_findings(rows, kind, isolated),
          "reference": analysis.reference_comparison(rows)}
    figures = plot_all(study_dir, rows, manifest["config"]["arch"], an, kind, isolated)
    rep = {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "study": _study(study_dir, manifest, rows, hw, isolated),
        "splits": [{k: v for k, v in r.items() if k not in ("metrics", "versions")}
                   for r in rows],
        "unfinished": got["unfinished"],
        "analysis": an,
        "reference": {"source": REFERENCE["source"],
                      "test_accuracy": {f"{k:g}": v for k, v in REFERENCE["test_accuracy"].items()},
                      "final_test_accuracy": REFERENCE["final_test_accuracy"],
                      "view": "one view"},
        "figures": figures,
    }
    md = markdown(rep, rows)
    atomic_write(study_dir / "report.json",
                 lambda t: Path(t).write_text(json.dumps(rep, indent=2, default=_json_default)))
    atomic_write(study_dir / "report.md", lambda t: Path(t).write_text(md))
    return rep


def _json_default(o):
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None
    return str(o)

