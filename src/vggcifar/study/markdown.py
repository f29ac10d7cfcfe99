"""The study report as markdown (``report.md``), written from the report dict that also becomes
``report.json``, so that the two always show the same numbers."""

from __future__ import annotations

from .analysis import mixed_machines, pct
from .presets import REFERENCE

CAPTIONS = {
    "accuracy": "Test accuracy against training fraction (log x), with the original study's "
                "numbers",
    "epoch_time": "Epoch time and training throughput against training fraction",
    "memory": "Peak memory against training fraction",
    "curves": "Loss and accuracy curves of all splits",
    "per_class": "Per-class test accuracy (class × split)",
}


def _fmt_acc(a):
    return "–" if a is None else f"{100 * a:.2f}%"


def _table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    align = align or ["---:"] * len(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _duration(s: float) -> str:
    s = float(s)
    if s < 90:
        return f"{s:.0f} s"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {sec:02d} s"


def _length(st: dict) -> str:
    """The study's training length in words: steps, epochs per split, or epochs by split."""
    cfg = st["config"]
    if cfg.get("steps"):
        return f"{cfg['steps']} optimisation steps per split"
    at_least = (f", at least {st['min_steps']} optimisation steps" if st.get("min_steps")
                else "")
    named = st.get("split_epochs") or {}
    if not named:
        return f"{cfg['epochs']} epochs per split{at_least}"
    text = ", ".join(f"{pct(float(s))}: {e}" for s, e in named.items())
    others = [s for s in st["splits"] if f"{s:g}" not in named]
    rest = f"; other splits {cfg['epochs']} epochs{at_least}" if others else ""
    return f"epochs by split ({text}){rest}"


def main_table(rows: list[dict], kind: str) -> tuple[list[str], list[list[str]]]:
    mem_col = ("peak GPU alloc / reserved (MB)" if kind == "gpu" else "peak RSS (MB)")
    header = ["split", "training images", "batch", "epochs", "steps", "best val acc", "test acc",
              "one view", "train s/epoch", "wall s/epoch", "images/s", mem_col,
              "total time (s)"]
    body = []
    for r in rows:
        mem = (f"{r['peak_memory_mb']:.0f} / {r['peak_reserved_mb']:.0f}" if kind == "gpu"
               else f"{r['peak_memory_mb']:.0f}")
        body.append([
            pct(r["split"]) + (" †" if r["resumed"] else ""), f"{r['train_images']:,}",
            str(r["batch_size"]), str(r["epochs"]), str(r["steps"]),
            _fmt_acc(r["best_val_accuracy"]), _fmt_acc(r["test_accuracy"]),
            _fmt_acc(r.get("test_accuracy_one_view")),
            f"{r['train_epoch_time_s']:.1f}" + ("*" if r["train_epoch_time_estimated"] else ""),
            f"{r['mean_epoch_time_s']:.1f}", f"{r['images_per_s']:.0f}", mem,
            ("≈ " if r.get("total_time_estimated") else "") + f"{r['total_time_s']:.1f}"])
    if mixed_machines(rows):  # times compare only within a machine: say which row ran where
        header.append("machine")
        for line, r in zip(body, rows):
            line.append(r.get("machine") or "?")
    return header, body


def markdown(rep: dict, rows: list[dict]) -> str:
    """``report.md`` for the report dict ``rep`` and the finished splits' ``rows``."""
    lines = (_title(rep, rows) + _results(rep, rows) + _findings(rep, rows) + _figures(rep)
             + _reproduce(rep, rows))
    return "\n".join(lines)


def _title(rep: dict, rows: list[dict]) -> list[str]:
    st = rep["study"]
    cfg = st["config"]
    width = cfg.get("width", 1)
    width_txt = "" if width == 1 else f" (width {width:g})"
    lines = ["# VGG on CIFAR-10: accuracy, time and memory against training-set size\n",
             f"Study folder `{st['name']}`: {cfg['arch']}{width_txt}, "
             f"{len(rows)} split{'s' if len(rows) != 1 else ''} of the CIFAR-10 training set, "
             f"{_length(st)}, seed {cfg['seed']}, on {st['device_description']}. "
             f"{'Preset `' + st['preset'] + '`. ' if st.get('preset') else ''}"
             f"Report generated {rep['generated']}.\n"]
    if st.get("note"):
        lines.append(f"> Note: {st['note']}\n")
    if rep["unfinished"]:
        lines.append(f"> **Unfinished splits** (not in the tables): "
                     f"{', '.join(pct(s) for s in rep['unfinished'])}. Continue with "
                     "`--resume`.\n")
    return lines


def _results(rep: dict, rows: list[dict]) -> list[str]:
    st, kind = rep["study"], rep["analysis"]["memory"]["kind"]
    header, body = main_table(rows, kind)
    lines = ["## Results\n", _table(header, body, ["---"] + ["---:"] * (len(header) - 1)), ""]
    ds = st.get("dataset") or {}
    n_all = f"{ds['train_images']:,} " if ds.get("train_images") else ""
    n_test = f"{rows[0]['test_images']:,}-image " if rows[0].get("test_images") else ""
    notes = [
        f"*split*: fraction of the {n_all}training images used for training (stratified by "
        "class); validation images come from the rest (up to the validation size); the test set "
        f"is the whole {n_test}test set, evaluated once on the checkpoint with the best "
        "validation accuracy (the last epoch when there is no validation set).",
        "*test acc*: as the run evaluated it (averaged with the mirrored image when its flip "
        "TTA was on); *one view*: the image alone, as the original study measured and as "
        "serving classifies.",
        "*train s/epoch*: training time of a full epoch (no validation), median over the full "
        "epochs, so the first epoch's warm-up and epochs slowed by other work do not skew it; "
        "*wall s/epoch*: that plus the mean validation time per epoch; *images/s*: median "
        "training throughput of the same epochs; *total time*: the split's whole run (start-up, "
        "data loading, training, validation, test, figures).",
        ("*peak RSS*: the process's peak resident set size (see below)." if kind == "rss" else
         "*peak GPU alloc / reserved*: PyTorch's peak allocated / reserved CUDA memory, reset "
         "every epoch, maximum over epochs."),
    ]
    if any(r["train_epoch_time_estimated"] for r in rows):
        notes.append("\\* no full epoch was trained (a --steps budget shorter than an epoch): "
                     "estimated as images per epoch / measured throughput.")
    if any(r["resumed"] for r in rows):
        notes.append("† resumed after an interruption: total time adds up its sessions (an "
                     "epoch cut short by the interruption is lost and not counted).")
    if any(r.get("total_time_estimated") for r in rows):
        notes.append("≈ resumed by a trainer that recorded only its last session's time: the sum "
                     "of the epochs' own times (start-up and the test evaluation not counted).")
    lines += [f"- {n}" for n in notes]
    classes = list(rows[0]["per_class_accuracy"])
    lines += ["", "### Per-class test accuracy\n",
              _table(["class"] + [pct(r["split"]) for r in rows],
                     [[c] + [_fmt_acc(r["per_class_accuracy"][c]) for r in rows]
                      for c in classes], ["---"] + ["---:"] * len(rows)), ""]
    return lines


def _findings(rep: dict, rows: list[dict]) -> list[str]:
    st, an = rep["study"], rep["analysis"]
    cfg = st["config"]
    lines = ["## What the numbers say\n", "Generated from the measured numbers above.\n",
             "**Accuracy.** " + " ".join(an["accuracy"]["text"]) + "\n",
             "**Time.** " + " ".join(an["time"]["text"]) + "\n",
             "**Memory.** " + " ".join(an["memory"]["text"]) + "\n"]
    ref = an["reference"]
    para = "**Compared with the original study.** " + " ".join(ref["text"])
    width = cfg.get("width", 1)
    differs = []
    if cfg["arch"] != "vgg16" or width != 1:
        differs.append(f"a {cfg['arch']}{'' if width == 1 else f' at width {width:g}'} instead "
                       "of the original's VGG16")
    if cfg.get("steps") or min(r["epochs"] for r in rows) < 30:
        differs.append(f"a short training budget ({_length(st)})")
    if differs:
        para += (" This study used " + " and ".join(differs) + ", so compare the trend rather "
                 "than the levels.")
    lines.append(para + "\n")
    lines.append(_table(
        ["split", REFERENCE["source"], "this study, one view", "difference (points)",
         "this study, as evaluated"],
        [[pct(r["split"]), f"{100 * r['reference_accuracy']:.1f}%", _fmt_acc(r["compared"])
          + ("" if r["compared_view"] in (None, "one view") else " ‡"),
          "–" if r["difference_points"] is None else f"{r['difference_points']:+.1f}",
          _fmt_acc(r["test_accuracy"])] for r in ref["rows"]],
        ["---", "---:", "---:", "---:", "---:"]))
    if any(r["compared_view"] == "as evaluated" for r in ref["rows"]):
        lines.append("\n‡ this run recorded no one-view figure: the figure as evaluated is "
                     "compared instead.")
    lines.append(f"\nThe original study's final VGG16 reached "
                 f"{100 * REFERENCE['final_test_accuracy']:.2f}% test accuracy.\n")
    return lines


def _figures(rep: dict) -> list[str]:
    lines = ["## Figures\n"]
    for key, rel in rep["figures"].items():
        lines += [f"![{CAPTIONS[key]}]({rel})\n", f"*{CAPTIONS[key]}.*\n"]
    return lines


def _epochs(n: int | None) -> str:
    return "the study's default length" if n is None else f"{n} epochs"


def _sessions(sessions: list[dict]) -> list[str]:
    """One line per start or resume of the study, with its command."""
    if len(sessions) == 1:
        return [f"- Command: `{s['command']}`" for s in sessions if s.get("command")]
    lines = []
    for s in sessions:
        what = "resumed" if s.get("kind") == "resume" else "started"
        if s.get("finished"):
            end = f", finished {s['finished']}"
        elif s.get("in_progress") is not None:
            end = f", stopped during split {pct(s['in_progress'])}"
        else:
            end = ", stopped"
        cmd = f": `{s['command']}`" if s.get("command") else ""
        lengths = "".join(f"; split {pct(float(k))} set to {_epochs(now)} before it started "
                          f"(was {_epochs(was)})"
                          for k, (was, now) in (s.get("split_epochs_changed") or {}).items())
        lines.append(f"- Session {what} {s['started']}{end}{cmd}{lengths}")
    return lines


def _reproduce(rep: dict, rows: list[dict]) -> list[str]:
    st = rep["study"]
    cfg = st["config"]
    lines = ["## Reproduce\n"] + _sessions(st["sessions"])
    lines.append(f"- Same settings without a preset: `{st['explicit_command']}`")
    lines.append(f"- Seed: {cfg['seed']} (fixes the class-stratified split, the initialisation "
                 "and the augmentation order)")
    lines.append(f"- Device: {st['device_description']}")
    v = st.get("versions") or {}
    lines.append("- Versions: " + ", ".join(f"{k} {v[k]}" for k in
                                             ("vggcifar", "torch", "torchvision", "python", "cuda")
                                             if k in v)
                 + (f"; {v['platform']}" if "platform" in v else ""))
    lines.append(f"- Data: `{st.get('data_source') or cfg['data']}` "
                 f"({st.get('data_format') or '?'})")
    where = "in its own process" if st["isolated"] else "in one shared process"
    n = len(st["sessions"])
    stopped = sum(1 for s in st["sessions"] if not s.get("finished"))
    lines.append(f"- Each split ran {where}; the splits' run times add up to "
                 f"{_duration(st['sum_split_time_s'])} over {n} session{'s' if n != 1 else ''} "
                 f"(the sessions' own wall time: {_duration(st['wall_time_s'])}"
                 + (", where a session stopped during a split counts only up to that split's "
                    "start" if stopped and n > 1 else "") + ").")
    loads = [(r["split"], r["load_avg_1min_at_start"][-1]) for r in rows
             if r["load_avg_1min_at_start"] and r["load_avg_1min_at_start"][-1] is not None]
    if loads:
        cpus = (st.get("hardware") or {}).get("logical_cpus")
        lines.append(f"- System load (1-minute average) when each split started"
                     f"{f' ({cpus} logical CPUs)' if cpus else ''}: "
                     + ", ".join(f"{pct(f)}: {x:.1f}" for f, x in loads)
                     + ". A load above the CPU count means other work shared the CPU, which "
                       "slows the timings.")
    folders = ", ".join(f"`{r['run_dir']}/`" for r in rows)
    lines += [f"- Per-split run folders: {folders} "
              "(config.json, metrics.csv, summary.json, curves, confusion matrix)", ""]
    return lines
