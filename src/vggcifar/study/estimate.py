"""How long a study will take: per split, the images it trains and evaluates and the hours at a
measured speed (:data:`vggcifar.study.presets.MEASURED_SPEEDS`), printed when a study starts or
resumes and recorded in its manifest. Standard library only.

The model: training images / training speed + evaluated images (validation passes and the final
test, two passes with flip TTA plus the one-view pass) / evaluation speed + a fixed cost per split
(start-up, data, figures: about a minute in the 1% split of docs/study-paper-cpu-1pct).
"""

from __future__ import annotations

import math

from .presets import MEASURED_SPEEDS, Budget, Speed

SPLIT_OVERHEAD_S = 60.0


def measured_speed(config: dict, device_type: str, amp: bool, cpu: str = "other"
                   ) -> Speed | None:
    """The measured speed for a study's options (a ``TrainConfig`` dict) on this kind of machine
    (``cpu``: :func:`vggcifar.runtime.devices.cpu_kind`, used for the CPU device), or None where
    nothing was measured: another architecture, width, device, precision or kind of CPU."""
    if not amp or config.get("width", 1) != 1 or config.get("model_kwargs"):
        return None
    return MEASURED_SPEEDS.get((config["arch"], device_type, cpu if device_type == "cpu" else ""))


def split_work(p: dict, test_images: int, tta: bool, epochs_done: int = 0) -> dict:
    """Images one split still has to train and evaluate.

    Args:
        p: the split's plan (:func:`vggcifar.study.runner.plan_epochs`): ``train_images``,
            ``val_images``, ``batch_size``, ``epochs``, ``steps``, ``steps_per_epoch``,
            ``val_every``.
        test_images: size of the test set; tta: flip TTA at the final test.
        epochs_done: epochs already trained (a split being resumed).
    """
    per_step = min(p["batch_size"], p["train_images"])
    steps_left = max(0, p["steps"] - epochs_done * p["steps_per_epoch"])
    validations = 0
    if p["val_images"]:
        every = max(1, p.get("val_every") or 1)
        validations = math.ceil(p["epochs"] / every) - epochs_done // every
    return {"train_images": steps_left * per_step,
            "eval_images": validations * p["val_images"] + test_images * (3 if tta else 1)}


def work_seconds(work: dict, train_ips: float, eval_ips: float) -> float:
    """Seconds for :func:`split_work`'s images at these speeds, plus the per-split overhead."""
    return (work["train_images"] / train_ips + work["eval_images"] / eval_ips
            + SPLIT_OVERHEAD_S)


def estimate(plan: dict, test_images: int, tta: bool, speed: Speed | None,
             budget: Budget | None = None, done: dict | None = None) -> dict:
    """Per split (keyed like ``plan``): work left and, with a ``speed``, seconds at that speed
    (``seconds``) and at the budget's training speed (``budget_seconds``); plus totals.

    ``done`` maps a split to the epochs it has trained already (``"all"``: finished).
    """
    done = done or {}
    out: dict = {"splits": {}, "seconds": 0.0 if speed else None,
                 "budget_seconds": 0.0 if speed and budget else None}
    for s, p in plan.items():
        if done.get(s) == "all":
            continue
        work = split_work(p, test_images, tta, int(done.get(s) or 0))
        row = {**work, "epochs": p["epochs"], "epochs_done": int(done.get(s) or 0)}
        if speed:
            row["seconds"] = work_seconds(work, speed.train_images_per_s, speed.eval_images_per_s)
            out["seconds"] += row["seconds"]
            if budget:
                row["budget_seconds"] = work_seconds(work, budget.images_per_s,
                                                     speed.eval_images_per_s)
                out["budget_seconds"] += row["budget_seconds"]
        out["splits"][s] = row
    return out


def _hours(s: float) -> str:
    return f"{s / 3600:.1f} h"


def estimate_lines(plan: dict, est: dict, speed: Speed | None, budget: Budget | None,
                   arch: str) -> list[str]:
    """The estimate as lines of text: one per split still to train, a total, and warnings where
    a split or the whole study outlasts the budget at the measured speed."""
    if not est["splits"]:
        return ["every split has finished: nothing left to train"]
    lines = [f"estimate at the measured speed ({speed.train_images_per_s:g} training, "
             f"{speed.eval_images_per_s:g} evaluation images/s; {speed.measured}):"
             if speed else f"no measured speed for {arch} on this device and kind of CPU: "
                           "images and epochs only, no hours:"]
    for s, row in est["splits"].items():
        p = plan[s]
        left = (f", epochs {row['epochs_done'] + 1}-{row['epochs']} left"
                if row["epochs_done"] else "")
        hours = f": {_hours(row['seconds'])}" if speed else ""
        lines.append(f"  split {s:g}: {p['train_images']:,} training images (batch "
                     f"{p['batch_size']}), {p['epochs']} epochs{left}; {row['train_images']:,} "
                     f"images to train, {row['eval_images']:,} to evaluate{hours}")
    if speed:
        total = f"  total: {_hours(est['seconds'])}"
        if budget:
            total += (f" ({_hours(est['budget_seconds'])} at the {budget.images_per_s:g} "
                      f"training images/s this preset is sized for)")
        lines.append(total)
    lines += _budget_warnings(est, budget)
    return lines


def _budget_warnings(est: dict, budget: Budget | None) -> list[str]:
    if not budget or est["seconds"] is None:
        return []
    out = [f"warning: split {s:g} takes {_hours(r['seconds'])} at the measured speed, more than "
           f"the {budget.split_hours:g} h per split the preset plans (if the study is stopped, "
           "--resume continues the split from its last epoch)"
           for s, r in est["splits"].items() if r["seconds"] > budget.split_hours * 3600]
    if est["seconds"] > budget.total_hours * 3600 * 1.05:
        out.append(f"warning: the study takes {_hours(est['seconds'])} at the measured speed, "
                   f"more than the about {budget.total_hours:g} h the preset plans")
    return out
