"""Turn the measured numbers of a study into short statements ("what the numbers say").

Every sentence here is computed from the rows passed in; nothing is assumed about the outcome.
"""

from __future__ import annotations

import math

from .presets import REFERENCE

# A doubling of the training images that adds less than this many accuracy points counts as
# saturated; a relative memory spread below this counts as "hardly changes".
SATURATION_POINTS_PER_DOUBLING = 2.0
FLAT_MEMORY_SPREAD = 0.10
# A split whose process got less than this share of its threads' CPU time, or whose epoch
# throughput varied more than this factor, was timed on a busy machine.
CPU_SHARE_BUSY = 0.8
THROUGHPUT_UNSTABLE = 1.5
LOAD_BUSY = 1.5  # x logical CPUs: a load average that means other work (fallback signal)


def pct(f: float) -> str:
    """0.01 -> '1%', 0.005 -> '0.5%'."""
    return f"{100 * f:g}%"


def mixed_machines(rows: list[dict]) -> dict[str, list[float]]:
    """``{machine: [splits]}`` when the splits ran on more than one machine (a study resumed
    elsewhere), else ``{}``. Rows without a recorded machine are left out."""
    by: dict[str, list[float]] = {}
    for r in rows:
        if r.get("machine"):
            by.setdefault(r["machine"], []).append(r["split"])
    return by if len(by) > 1 else {}


def linear_fit(xs: list[float], ys: list[float]) -> dict | None:
    """Least-squares ``y = a + b x``: ``{"slope", "intercept", "r2"}`` (None for < 2 distinct x)."""
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - (a + b * x)) ** 2 for x, y in zip(xs, ys))
    return {"slope": b, "intercept": a, "r2": 1 - ss_res / ss_tot if ss_tot > 0 else 1.0}


def accuracy_figure(rows: list[dict]) -> tuple[str, str]:
    """The accuracy the trend is read from: ``("test_accuracy_one_view", " (one view)")`` when
    every row has the one-view figure (the original study's), else the figure as evaluated."""
    if rows and all(r.get("test_accuracy_one_view") is not None for r in rows):
        return "test_accuracy_one_view", " (one view)"
    return "test_accuracy", ""


def accuracy_findings(rows: list[dict]) -> dict:
    key, view = accuracy_figure(rows)
    pts = [(r["split"], r[key]) for r in rows]
    out: dict = {"gains": [], "monotonic": None, "saturates_from": None, "text": [],
                 "figure": key}
    if not pts:
        return out
    if len(pts) == 1:
        out["text"].append(f"Only one split ({pct(pts[0][0])}: {100 * pts[0][1]:.2f}% test "
                           f"accuracy{view}), so there is no trend to read.")
        return out
    for (f0, a0), (f1, a1) in zip(pts, pts[1:]):
        doublings = math.log2(f1 / f0)
        out["gains"].append({"from": f0, "to": f1, "points": 100 * (a1 - a0),
                             "points_per_doubling": 100 * (a1 - a0) / doublings})
    drops = [g for g in out["gains"] if g["points"] < 0]
    flat = [g for g in out["gains"] if g["points"] == 0]
    out["monotonic"] = not drops
    out["rises"] = not drops and not flat
    lo, hi = pts[0], pts[-1]
    if not drops and not flat:
        out["text"].append(
            f"Test accuracy{view} rises with every increase of the training fraction, from "
            f"{100 * lo[1]:.2f}% at {pct(lo[0])} to {100 * hi[1]:.2f}% at {pct(hi[0])}.")
    elif not drops:
        d = ", ".join(f"{pct(g['from'])} to {pct(g['to'])}" for g in flat)
        out["text"].append(
            f"Test accuracy{view} never falls as the training fraction grows, but does not "
            f"change from {d} (overall {100 * lo[1]:.2f}% at {pct(lo[0])} to {100 * hi[1]:.2f}% at "
            f"{pct(hi[0])}).")
    else:
        d = "; ".join(f"from {pct(g['from'])} to {pct(g['to'])} it falls by {-g['points']:.2f} "
                      "points" for g in drops)
        out["text"].append(
            f"Test accuracy{view} does not rise with every increase of the training fraction: {d} "
            f"(overall {100 * lo[1]:.2f}% at {pct(lo[0])} to {100 * hi[1]:.2f}% at {pct(hi[0])}).")
    gains = out["gains"]
    out["text"].append("Gain per doubling of the training images: " + ", ".join(
        f"{g['points_per_doubling']:+.1f} points ({pct(g['from'])}→{pct(g['to'])})"
        for g in gains) + ".")
    out["text"].append(_saturation(gains, hi[0], out))
    steps = [r.get("steps") for r in rows]
    epochs = [r.get("epochs") for r in rows]
    if all(steps) and all(epochs) and (max(steps) > 1.2 * min(steps) or len(set(epochs)) > 1):
        out["budget_differs"] = True
        seg = "; ".join(
            f"{pct(a['split'])}→{pct(b['split'])}: {a['steps']}→{b['steps']} steps, "
            f"{a['epochs']}→{b['epochs']} epochs" for a, b in zip(rows, rows[1:]))
        out["text"].append(
            "The splits did not get the same training: accuracy differences mix more data with "
            f"more or less training ({seg}). A split trained for few epochs is further from its "
            "own ceiling.")
    gaps = [(r["split"], 100 * (r["final_train_accuracy"] - r[key])) for r in rows
            if r.get("final_train_accuracy") is not None]
    if len(gaps) >= 2:
        out["generalisation_gap_points"] = {f"{f:g}": g for f, g in gaps}
        out["text"].append(
            f"Final-epoch training accuracy minus {'one-view ' if view else ''}test accuracy "
            "(augmented training batches, so only a rough overfitting signal): " + ", ".join(
                f"{g:+.1f} points at {pct(f)}" for f, g in gaps) + ".")
    return out


def _saturation(gains: list[dict], largest: float, out: dict) -> str:
    """Whether the gain per doubling of the data falls below the saturation threshold; sets
    ``out["saturates_from"]``."""
    low = [g["points_per_doubling"] < SATURATION_POINTS_PER_DOUBLING for g in gains]
    # Saturated from the first split after which *every* further doubling adds little.
    sat_i = next((i for i in range(len(gains)) if all(low[i:])), None)
    first, last = gains[0]["points_per_doubling"], gains[-1]["points_per_doubling"]
    if sat_i is not None:
        sat = gains[sat_i]
        out["saturates_from"] = sat["from"]
        return (
            f"Accuracy saturates from {pct(sat['from'])} on: every larger split adds less than "
            f"{SATURATION_POINTS_PER_DOUBLING:g} points per doubling of the data.")
    if any(low):
        flat = [g for g, lo_ in zip(gains, low) if lo_]
        return (
            "The gain is uneven rather than saturating: " + ", ".join(
                f"{pct(g['from'])}→{pct(g['to'])} adds only "
                f"{g['points_per_doubling']:.1f} points per doubling" for g in flat)
            + ", but a larger split gains more again.")
    if len(gains) > 1 and last < first / 2:
        return (
            f"Returns diminish (the gain per doubling falls from {first:.1f} to {last:.1f} "
            f"points) but accuracy has not saturated at {pct(largest)}: each doubling still adds "
            f"at least {SATURATION_POINTS_PER_DOUBLING:g} points.")
    return (f"No sign of saturation within these splits: the gain per doubling stays at "
            f"{min(g['points_per_doubling'] for g in gains):.1f} points or more.")


def time_findings(rows: list[dict], cpus: int | None = None) -> dict:
    out: dict = {"text": []}
    machines = mixed_machines(rows)
    if machines:
        out["machines"] = {m: [f"{s:g}" for s in splits] for m, splits in machines.items()}
        out["text"].append(
            "The splits ran on different machines (" + "; ".join(
                f"{', '.join(pct(s) for s in splits)} on {m}" for m, splits in machines.items())
            + "), so their epoch times compare across splits only within one machine; the fit "
              "below mixes them.")
    pts = [(r["train_images"], r["train_epoch_time_s"]) for r in rows
           if r.get("train_epoch_time_s")]
    if not pts:
        return out
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    i_lo, i_hi = xs.index(min(xs)), xs.index(max(xs))
    fit = linear_fit(xs, ys)
    out["linear_fit"] = None if fit is None else {
        "seconds_per_1000_images": 1000 * fit["slope"], "intercept_s": fit["intercept"],
        "r2": fit["r2"]}
    loglog = None
    if all(x > 0 and y > 0 for x, y in pts):
        loglog = linear_fit([math.log(x) for x in xs], [math.log(y) for y in ys])
    out["loglog_exponent"] = None if loglog is None else loglog["slope"]
    if fit is None:
        out["text"].append(f"One training-set size only ({xs[0]:,} images, {ys[0]:.1f} s of "
                           "training per epoch): no scaling to fit.")
        return out
    out["text"].append(
        f"Training time per epoch grows from {ys[i_lo]:.1f} s ({xs[i_lo]:,} images) to "
        f"{ys[i_hi]:.1f} s ({xs[i_hi]:,} images): a linear fit gives "
        f"{1000 * fit['slope']:.2f} s per 1,000 images "
        f"{'plus' if fit['intercept'] >= 0 else 'minus'} {abs(fit['intercept']):.1f} s "
        f"(R² {fit['r2']:.3f}).")
    if loglog is not None:
        k = loglog["slope"]
        if 0.9 <= k <= 1.1:
            how = "close to 1: time per epoch is proportional to the number of training images"
        elif k < 0.9:
            how = ("below 1: the small splits cost more per image (smaller batches or fixed "
                   "per-epoch costs)")
        else:
            how = "above 1: the large splits cost more per image"
        out["text"].append(f"On log-log axes the exponent is {k:.2f}, {how}.")
    out["text"] += _contention(rows, cpus, out)
    ips = [(r["split"], r["images_per_s"], r["batch_size"]) for r in rows if r.get("images_per_s")]
    if len(ips) >= 2:
        lo = min(ips, key=lambda t: t[1])
        hi = max(ips, key=lambda t: t[1])
        out["text"].append(
            f"Training throughput ranges from {lo[1]:.0f} images/s ({pct(lo[0])}, batch {lo[2]}) "
            f"to {hi[1]:.0f} images/s ({pct(hi[0])}, batch {hi[2]}).")
    return out


def _contention(rows: list[dict], cpus: int | None, out: dict) -> list[str]:
    """Sentences on whether each split was timed on a busy machine. Signals: the share of its
    threads' time the split's process got on the CPU, and how much its epoch throughput varied
    (every epoch does the same work). Without a CPU share, a load average well above the CPU
    count at the split's start (the study's own previous split counts too, hence the margin)."""
    text, busy, quiet = [], [], []
    shares = [(r["split"], r["cpu_share"]) for r in rows if r.get("cpu_share") is not None]
    if shares:
        out["cpu_share"] = {f"{f:g}": x for f, x in shares}
        text.append("Share of its threads' time each split's process got on the CPU (1 = never "
                    "waiting): " + ", ".join(f"{pct(f)}: {x:.2f}" for f, x in shares) + ".")
    for r in rows:
        why = []
        share = r.get("cpu_share")
        if share is not None and share < CPU_SHARE_BUSY:
            why.append(f"CPU share {share:.2f}")
        rng = r.get("epoch_images_per_s_range")
        if rng and rng[0] > 0 and rng[1] / rng[0] > THROUGHPUT_UNSTABLE:
            why.append(f"epoch throughput {rng[0]:.0f}–{rng[1]:.0f} images/s")
        loads = [x for x in (r.get("load_avg_1min_at_start") or []) if x is not None]
        if share is None and cpus and loads and loads[-1] > LOAD_BUSY * cpus:
            why.append(f"load average {loads[-1]:.1f} at its start")
        (busy if why else quiet).append((r["split"], why))
    out["contended_splits"] = [f for f, _ in busy]
    out["contended"] = bool(busy)
    if busy:
        text.append(
            "Other work shared the CPU during " + "; ".join(
                f"{pct(f)} ({', '.join(w)})" for f, w in busy) + ": its times include waiting for "
            "the CPU (upper bounds for a quiet machine); the medians above keep the slowed "
            "epochs from dominating, but not entirely.")
        if quiet:
            text.append("The other splits (" + ", ".join(pct(f) for f, _ in quiet) + ") ran on "
                        "an otherwise quiet machine.")
    elif rows:
        text.append("Every split ran on an otherwise quiet machine (steady epoch throughput"
                    + (", full CPU share" if shares else "") + ").")
    return text


def _spread(g: list) -> float:
    """Relative spread of the memory of points ``(split, batch, mb, images)``."""
    m = [p[2] for p in g]
    return (max(m) - min(m)) / min(m) if min(m) > 0 else 0.0


def _mb_range(g: list) -> str:
    lo_, hi_ = min(p[2] for p in g), max(p[2] for p in g)
    return f"{lo_:.0f} MB" if round(lo_) == round(hi_) else f"{lo_:.0f}–{hi_:.0f} MB"


def _memory_meaning(kind: str, isolated: bool | None) -> str:
    """What the peak-memory figure measures, for this device and launch mode."""
    if kind != "rss":
        return ("On CUDA, peak memory is PyTorch's peak allocated GPU memory (reserved by the "
                "caching allocator in brackets), reset at every epoch by the trainer; the device "
                "loader keeps the split's training images on the GPU, so part of it does scale "
                "with the split.")
    if isolated:
        return ("On CPU, peak memory is the peak resident set size (RSS) of the process: a "
                "high-water mark that includes the Python/PyTorch runtime and the whole decoded "
                "dataset (every split loads all of it), besides the model, optimiser state and "
                "activations. Each split ran in its own process, so each value is that split's "
                "own peak.")
    return ("On CPU, peak memory is the peak resident set size (RSS) of the process, a "
            "high-water mark for the whole process. The splits ran in one process "
            "(--no-isolate), so each value is the peak so far, including the splits trained "
            "before it: the memory numbers and figure are not per split, and no conclusion "
            "is drawn from them.")


def memory_findings(rows: list[dict], kind: str, isolated: bool | None) -> dict:
    out: dict = {"kind": kind, "text": [_memory_meaning(kind, isolated)], "conclusion": None}
    if kind == "rss" and not isolated:
        out["conclusion"] = "not per split"
        return out
    pts = [(r["split"], r["batch_size"], r["peak_memory_mb"], r["train_images"]) for r in rows
           if r.get("peak_memory_mb") is not None]
    if len(pts) < 2:
        return out
    groups: dict[int, list] = {}
    for p in pts:
        groups.setdefault(p[1], []).append(p)
    if len(groups) == 1:
        _one_batch_size(pts, out)
    else:
        _several_batch_sizes(pts, groups, out)
    return out


def _one_batch_size(pts: list, out: dict) -> None:
    """Every split at the same batch size: memory against the fraction alone."""
    b = pts[0][1]
    mems = [p[2] for p in pts]
    n_ratio = max(p[3] for p in pts) / max(1, min(p[3] for p in pts))
    s = _spread(pts)
    out["within_batch_spread"] = {str(b): s}
    line = (f"All splits used batch size {b}; peak memory ranges from {min(mems):.0f} to "
            f"{max(mems):.0f} MB ({100 * s:.0f}% apart) while the training images grow "
            f"{n_ratio:.0f}-fold")
    if s < FLAT_MEMORY_SPREAD:
        out["conclusion"] = "batch size"
        out["text"].append(line + ", so at a fixed batch size memory hardly depends on the "
                           "fraction.")
    else:
        fit = linear_fit([p[3] for p in pts], mems)
        out["conclusion"] = "fraction"
        out["text"].append(line + f": memory grows with the fraction, about "
                           f"{1000 * fit['slope']:.1f} MB per 1,000 training images.")


def _several_batch_sizes(pts: list, groups: dict, out: dict) -> None:
    """Splits at different batch sizes: the effect of the images, measured within the largest
    same-batch group, and what is left between batch sizes."""
    multi = {b: g for b, g in groups.items() if len(g) >= 2}
    out["within_batch_spread"] = {str(b): _spread(g) for b, g in multi.items()}
    desc = "; ".join(f"batch {b}: {', '.join(pct(p[0]) for p in g)} at {_mb_range(g)}"
                     for b, g in sorted(groups.items()))
    out["text"].append(f"The automatic batch size differs between splits ({desc}).")
    if not multi:
        out["conclusion"] = "confounded"
        out["text"].append("Each batch size occurs in one split only, so these runs cannot tell "
                           "the batch size's effect on memory from the fraction's.")
        return
    # The largest same-batch group gives the effect of the images alone ...
    b_ref, g_ref = max(multi.items(), key=lambda kv: len(kv[1]))
    fit = linear_fit([p[3] for p in g_ref], [p[2] for p in g_ref])
    slope = fit["slope"] if fit else 0.0
    within = _spread(g_ref)
    out["mb_per_1000_images"] = {"batch_size": b_ref, "slope": 1000 * slope,
                                 "r2": fit["r2"] if fit else None}
    fraction_matters = within >= FLAT_MEMORY_SPREAD
    out["text"].append(
        f"At batch {b_ref}, memory grows with the fraction: {1000 * slope:.1f} MB per 1,000 "
        f"training images ({_mb_range(g_ref)}, {100 * within:.0f}% apart)." if fraction_matters
        else f"At batch {b_ref}, memory hardly changes with the fraction ({_mb_range(g_ref)}, "
             f"{100 * within:.0f}% apart).")
    # ... and what is left between batch sizes is the batch size's effect.
    effects = _batch_effects(groups, b_ref, g_ref, slope)
    out["batch_effects"] = effects
    batch_matters = any(abs(e["relative"]) >= FLAT_MEMORY_SPREAD for e in effects)
    for e in effects:
        out["text"].append(
            f"{pct(e['vs_split'])} (batch {b_ref}) uses {e['difference_mb']:+.0f} MB against "
            f"{pct(e['split'])} (batch {e['batch_size']}); the per-image slope accounts for "
            f"{e['from_images_mb']:+.0f} MB of it, leaving {e['from_batch_mb']:+.0f} MB "
            f"({100 * e['relative']:+.0f}%) for the batch size.")
    out["conclusion"] = ("both" if fraction_matters and batch_matters else
                         "fraction" if fraction_matters else
                         "batch size" if batch_matters else "neither")
    out["text"].append({
        "both": "So memory depends on both the fraction and the batch size here (each by 10% "
                "or more).",
        "fraction": "So memory depends mainly on the fraction; the batch size changes it by less "
                    "than 10% here.",
        "batch size": "So memory follows the batch size, not the fraction.",
        "neither": "Neither the fraction nor the batch size changes memory by 10% or more here.",
    }[out["conclusion"]])


def _batch_effects(groups: dict, b_ref: int, g_ref: list, slope: float) -> list[dict]:
    """For each split outside the reference batch size: its memory difference to the nearest
    reference split (by training images), split into the images' share (``slope`` MB per image)
    and the batch size's."""
    effects = []
    for b, g in sorted(groups.items()):
        if b == b_ref:
            continue
        for f, _, m, n in g:
            near = min(g_ref, key=lambda p: abs(math.log(p[3] / n)))
            total = near[2] - m
            from_images = slope * (near[3] - n)
            effects.append({"split": f, "batch_size": b, "vs_split": near[0],
                            "difference_mb": total, "from_images_mb": from_images,
                            "from_batch_mb": total - from_images,
                            "relative": (total - from_images) / min(m, near[2])})
    return effects


def reference_comparison(rows: list[dict]) -> dict:
    """This study's test accuracy against the original study's at the same fractions. The
    original figures are one view, so the one-view figure is compared (``compared``), or the
    figure as evaluated where a run recorded no one-view figure (``compared_view`` says which)."""
    ref = REFERENCE["test_accuracy"]
    out = {"source": REFERENCE["source"], "final_test_accuracy": REFERENCE["final_test_accuracy"],
           "rows": [], "text": []}
    for f, a in sorted(ref.items()):
        mine = next((r for r in rows if math.isclose(r["split"], f, rel_tol=1e-9)), None)
        one = mine.get("test_accuracy_one_view") if mine else None
        compared = one if one is not None else (mine["test_accuracy"] if mine else None)
        out["rows"].append({
            "split": f, "reference_accuracy": a,
            "test_accuracy": mine["test_accuracy"] if mine else None,
            "test_accuracy_one_view": one, "compared": compared,
            "compared_view": None if mine is None else
            "one view" if one is not None else "as evaluated",
            "difference_points": 100 * (compared - a) if compared is not None else None,
            "reaches": compared >= a if compared is not None else None})
    hits = [r for r in out["rows"] if r["compared"] is not None]
    if hits:
        each = [f"{pct(r['split'])}: {100 * r['compared']:.2f}%"
                f"{'' if r['compared_view'] == 'one view' else ' (as evaluated)'} vs "
                f"{100 * r['reference_accuracy']:.1f}% ({r['difference_points']:+.1f} points)"
                for r in hits]
        out["text"].append(
            "Against the original study at the same fractions (one view): " + ", ".join(each)
            + f"; the original's final VGG16 reached "
              f"{100 * REFERENCE['final_test_accuracy']:.2f}%.")
        missed = [r for r in hits if not r["reaches"]]
        out["text"].append(
            "Every split reaches the original figure." if not missed else
            "Short of the original figure: " + ", ".join(
                f"{pct(r['split'])} by {-r['difference_points']:.1f} points" for r in missed)
            + ".")
    return out
