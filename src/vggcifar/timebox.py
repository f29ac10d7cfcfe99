"""Time-boxed stages: commands run one after another within a global deadline, each in its own
process group (:func:`vggcifar.procs.run_group`) under a cap of its own, with a results folder
kept current after every step, so that a job on a machine lent for a fixed time (and killed at
its end) loses nothing already measured.

The results folder ``out`` holds ``summary.json`` and ``results.tar.gz``, both rewritten
atomically after each step: the tarball takes files in priority order up to a byte budget (long
logs keep their head and tail) and lists what it left out. :func:`check_folder` checks ``out``
against the :class:`Limits` of what the lending machine returns. Used by
``scripts/gpu_acceptance.py``; the standard library only (plus :mod:`vggcifar.io` and
:mod:`vggcifar.procs`), so importing it is cheap.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import signal
import tarfile
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .io import atomic_write
from .procs import run_group

INF = float("inf")


@dataclass(frozen=True)
class Stage:
    """One step: ``cap_s`` its own limit (:data:`INF`: the rest of the time), ``min_s`` the
    least time it is started with, ``what`` one line on what it tells."""

    num: int
    name: str
    cap_s: float
    min_s: float
    what: str


@dataclass(frozen=True)
class Limits:
    """What the results folder may hold, and how the tarball stays within it."""

    max_files: int = 8
    max_file_bytes: int = 16 * 2**20
    max_total_bytes: int = 64 * 2**20
    max_depth: int = 2                   # folders below ``out``
    max_tar_bytes: int = 15 * 10**6
    tar_member_budget: int = 14 * 10**6  # uncompressed bytes put in the tarball
    log_tail_bytes: int = 2 * 10**6      # longer logs (``logs/...``) keep their head and tail


def one_line(e: BaseException) -> str:
    """``"TypeName: first line of the message"``, at most 300 characters."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}"[:300]


def write_json(path: Path, obj) -> None:
    """``obj`` as indented JSON (``str()`` for what JSON lacks), written atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, default=str)))


def read_json(path: Path):
    """The JSON in ``path``, or None where there is none (missing, unreadable or half-written)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def record_check(res: dict, name: str, fn: Callable[[], object], save: Callable[[], None],
                 tag: str) -> bool:
    """``res[name] = fn()``, or ``{"error": one line}`` (the traceback printed) if it raises;
    a dict result gets its ``wall_s``. Printed as ``[tag] name: ...`` and ``save()``d, so a
    later failure or kill loses nothing. Returns False when ``fn`` raised."""
    t, ok = time.perf_counter(), True
    print(f"[{tag}] {name} ...", flush=True)
    try:
        res[name] = fn()
    except Exception as e:  # noqa: BLE001 - record it and go on with the next check
        traceback.print_exc()
        res[name], ok = {"error": one_line(e)}, False
    if isinstance(res[name], dict):
        res[name]["wall_s"] = round(time.perf_counter() - t, 2)
    print(f"[{tag}] {name}: {json.dumps(res[name], default=str)[:600]}", flush=True)
    save()
    return ok


def _log_ends(path: Path, limit: int) -> bytes:
    """A log whole, or its first and last ``limit / 2`` bytes when longer: only those are read
    (a runaway log may be gigabytes)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= limit:
            return f.read(limit + 1)
        half = limit // 2
        head = f.read(half)
        f.seek(-half, os.SEEK_END)
        return head + b"\n[... middle of the log left out ...]\n" + f.read(half)


def write_tarball(members: list[tuple[str, Path]], dest: Path, limits: Limits = Limits()) -> None:
    """Write ``members`` (name in the tarball, file), in priority order, under ``results/`` in
    the gzipped tarball ``dest``, atomically. What does not fit the byte budget is left out and
    named in ``results/LEFT_OUT.txt``.

    Raises:
        OSError: a file cannot be read, or the tarball would exceed ``limits.max_tar_bytes``
            (``dest`` is then left as it was).
    """
    def add(tar, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(f"results/{name}")
        info.size, info.mtime = len(data), int(time.time())
        tar.addfile(info, io.BytesIO(data))

    def write(tmp: str) -> None:
        used, skipped = 0, []
        with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
            for name, path in members:
                data = _log_ends(path, limits.log_tail_bytes) if name.startswith("logs/") \
                    else path.read_bytes()
                if used + len(data) > limits.tar_member_budget:
                    skipped.append(name)
                    continue
                used += len(data)
                add(tar, name, data)
            if skipped:
                mb = limits.max_tar_bytes / 10**6
                add(tar, "LEFT_OUT.txt", (f"left out to stay under {mb:g} MB:\n"
                                          + "\n".join(skipped) + "\n").encode())
        if os.path.getsize(tmp) > limits.max_tar_bytes:
            raise OSError(f"{dest.name} would be {os.path.getsize(tmp)} bytes")

    atomic_write(dest, write)


def check_folder(out: Path, limits: Limits = Limits()) -> dict:
    """``out`` against ``limits``: ``{"files": sorted relative names, "bytes": total, "ok": no
    problem, "problems": one line each}`` (links count as files, and as problems)."""
    files = [p for p in out.rglob("*") if p.is_file() or p.is_symlink()]
    problems = ([f"{len(files)} files (at most {limits.max_files})"]
                if len(files) > limits.max_files else [])
    total = 0
    for p in files:
        size, rel = p.lstat().st_size, p.relative_to(out)
        total += size
        if size > limits.max_file_bytes:
            problems.append(f"{rel}: {size} bytes (at most {limits.max_file_bytes / 2**20:g} MiB)")
        if len(rel.parts) - 1 > limits.max_depth:
            problems.append(f"{rel}: more than {limits.max_depth} folders deep")
        if p.is_symlink():
            problems.append(f"{rel}: a link")
    if total > limits.max_total_bytes:
        problems.append(f"{total} bytes in all (at most {limits.max_total_bytes / 2**20:g} MiB)")
    tar = out / "results.tar.gz"
    if tar.exists() and tar.stat().st_size > limits.max_tar_bytes:
        problems.append(f"results.tar.gz: {tar.stat().st_size} bytes "
                        f"(at most {limits.max_tar_bytes / 10**6:g} MB)")
    return {"files": sorted(str(p.relative_to(out)) for p in files), "bytes": total,
            "ok": not problems, "problems": problems}


def parse_caps(stages: list[Stage], overrides: list[str] | None) -> dict[str, float]:
    """Each stage's cap, with ``NAME=SECONDS`` overrides applied.

    Raises:
        ValueError: an unknown stage name or a number that is not one (one line).
    """
    caps = {s.name: s.cap_s for s in stages}
    for item in overrides or []:
        name, _, secs = item.partition("=")
        if name not in caps:
            raise ValueError(f"unknown stage {name!r}")
        try:
            value = float(secs)
        except ValueError:
            raise ValueError(f"stage {name}: {secs!r} is not a number of seconds") from None
        if not (math.isfinite(value) and value >= 0):  # nan: killed at once; inf: no deadline
            raise ValueError(f"stage {name}: {secs!r} is not a finite number of seconds >= 0")
        caps[name] = value
    return caps


class Timebox:
    """A run of ``stages`` within ``budget_s`` seconds of ``t0`` (a ``time.perf_counter()``),
    ``reserve_s`` of which are kept for the work after the last stage.

    ``summary`` (written to ``out/summary.json``) starts as ``head`` plus the budget, the start
    time, a record per stage (status ``pending``) and ``notes``. ``members()`` lists the
    tarball's files in priority order. Logs go to ``work/logs``: ``own_log`` for the run's own
    lines (those of :meth:`say`), ``{num}-{stage}.log`` for each stage's output, ending with a
    ``[name] status ...`` line.
    """

    def __init__(self, stages: list[Stage], out: Path, work: Path, budget_s: float,
                 reserve_s: float, *, caps: dict[str, float] | None = None,
                 min_s: float | None = None, head: dict | None = None, name: str = "timebox",
                 own_log: str = "timebox.log", t0: float | None = None, limits: Limits = Limits(),
                 members: Callable[[], list[tuple[str, Path]]] = list):
        self.stages, self.out, self.work, self.name = stages, out, work, name
        self.budget_s, self.reserve_s, self.limits, self.members = budget_s, reserve_s, limits, members
        self.caps = caps or {s.name: s.cap_s for s in stages}
        self.min_s = min_s  # overrides every stage's min_s (e.g. 0 for a dry run)
        self.t0 = time.perf_counter() if t0 is None else t0
        self.logs, self.own_log = work / "logs", own_log
        self.logs.mkdir(parents=True, exist_ok=True)
        self.summary: dict = {
            **(head or {}), "budget_s": budget_s,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "stages": [{"stage": s.num, "name": s.name,
                        "cap_s": None if self.caps[s.name] == INF else self.caps[s.name],
                        "what": s.what, "status": "pending"} for s in stages],
            "notes": []}

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def say(self, msg: str) -> None:
        """Print ``msg`` with the elapsed time, and append it to the run's own log."""
        line = f"[{self.elapsed():6.1f}s] {msg}"
        print(line, flush=True)
        try:
            with open(self.logs / self.own_log, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass

    def announce(self, extra: str = "") -> None:
        """The opening lines: the folders, the budget and each stage's cap."""
        self.say(f"{self.name}: out {self.out}, work {self.work}, budget {self.budget_s:.0f}s{extra}")
        for st in self.stages:
            cap = self.caps[st.name]
            self.say(f"  stage {st.num} {st.name:<9} cap "
                     f"{'rest' if cap == INF else f'{cap:.0f}s':>5}  {st.what}")

    def write_outputs(self) -> None:
        """Atomically rewrite ``out/summary.json`` and ``out/results.tar.gz`` (a tarball that
        cannot be written is noted in the summary, and the old one kept)."""
        self.summary["elapsed_s"] = round(self.elapsed(), 1)
        write_json(self.out / "summary.json", self.summary)
        try:
            write_tarball(self.members(), self.out / "results.tar.gz", self.limits)
        except OSError as e:
            self.summary["notes"].append(f"results.tar.gz not rewritten: {e}")

    def run_stages(self, command: Callable[[str], tuple[list[str], str]],
                   collect: Callable[[str, dict], dict], env: dict | None = None,
                   cwd: Path | None = None) -> None:
        """Each stage in turn: ``command(name)`` gives its command line and how the summary
        shows it; ``collect(name, run_group's result)`` what it left, into ``summary[name]``."""
        deadline = self.budget_s - self.reserve_s
        for st, rec in zip(self.stages, self.summary["stages"]):
            self._stage(st, rec, deadline - self.elapsed(), command, collect, env, cwd)

    def _stage(self, st: Stage, rec: dict, left: float, command, collect, env, cwd) -> None:
        give = min(self.caps[st.name], left)
        need = st.min_s if self.min_s is None else self.min_s
        if give <= 0 or give < need:
            rec.update(status="skipped", reason=(
                f"only {max(0, left):.0f}s left before the deadline (needs {need:.0f}s)"
                if left > 0 else "no time left before the deadline"))
            self.summary[st.name] = {"skipped": rec["reason"]}
            self.say(f"stage {st.num} {st.name}: skipped ({rec['reason']})")
            self.write_outputs()
            return
        cmd, shown = command(st.name)
        log = self.logs / f"{st.num}-{st.name}.log"
        rec.update(status="running", given_s=round(give, 1), log=f"logs/{log.name}", command=shown)
        self.say(f"stage {st.num} {st.name}: start, {give:.0f}s")
        self.write_outputs()
        r = run_group(cmd, log, give, env=env, cwd=cwd, label=self.name)
        rec.update(r)
        if r["status"] == "timeout":
            rec["reason"] = f"killed (process group) after {give:.0f}s"
        try:
            self.summary[st.name] = collect(st.name, r)
        except Exception as e:  # noqa: BLE001 - reading results must not end the run
            self.summary[st.name] = {"error": f"collecting results: {one_line(e)}"}
        self.say(f"stage {st.num} {st.name}: {r['status']} in {r['wall_s']:.0f}s")
        self.write_outputs()

    def publish(self, files: list[Path]) -> None:
        """Copy ``files`` into ``out``.

        Raises:
            OSError: ``out`` would then hold more than ``limits.max_files`` files (nothing is
                copied), or a copy failed.
        """
        have = [p for p in self.out.rglob("*") if p.is_file()]
        if len(have) + len(files) > self.limits.max_files:
            raise OSError(f"{len(files)} more files would make {self.out.name} hold more than "
                          f"{self.limits.max_files} files")
        # Each file whole or not at all (the machine's SIGTERM comes at the end, when this
        # runs), manifests last: a .json in out means its parts are there.
        for p in sorted(files, key=lambda f: f.suffix == ".json"):
            atomic_write(self.out / p.name, lambda tmp, src=p: shutil.copy2(src, tmp))

    def passed(self) -> bool:
        """Every stage that ran passed (skipped ones count as passed)."""
        return all(rec["status"] in ("ok", "skipped") for rec in self.summary["stages"])

    def run(self, body: Callable[[], bool], remove_work: bool) -> tuple[bool, dict]:
        """``body()`` (True: it passed); an interrupt (KeyboardInterrupt, or SIGTERM: the
        machine's own timeout) is noted, not raised. Then, whatever happened, the final outputs
        (:meth:`finish`). Returns ``(passed, the check of out)``. Call it from the main thread
        (it sets a SIGTERM handler for its duration)."""
        def on_stop(signum, frame):
            raise KeyboardInterrupt

        # SIGHUP too: a dropped ssh session must not leave summary.json saying "running".
        stops = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
        before = {sig: signal.signal(sig, on_stop) for sig in stops}
        ok = False
        try:
            ok = body()
        except KeyboardInterrupt:
            self.summary["notes"].append(f"interrupted after {self.elapsed():.0f}s")
            self.say("interrupted: writing what there is")
        finally:
            # A second signal must not cut the final outputs short: they are what is kept.
            for sig in stops:
                signal.signal(sig, signal.SIG_IGN)
            try:
                check = self.finish(remove_work)
            finally:
                for sig, handler in before.items():
                    signal.signal(sig, handler)
        return ok, check

    def finish(self, remove_work: bool) -> dict:
        """Stages still running marked interrupted, the outputs rewritten with the check of
        ``out`` and the total time, and ``work`` removed if asked. Returns the check."""
        for rec in self.summary["stages"]:
            if rec["status"] == "running":
                rec["status"] = "interrupted"
        self.write_outputs()
        self.summary["out_check"] = check_folder(self.out, self.limits)
        self.summary["total_s"] = round(self.elapsed(), 1)
        self.write_outputs()
        self.summary["out_check"] = check = check_folder(self.out, self.limits)  # final listing
        write_json(self.out / "summary.json", self.summary)
        if remove_work:
            shutil.rmtree(self.work, ignore_errors=True)
        return check

    def stage_lines(self) -> list[tuple[str, str]]:
        """A table row per stage: status, time taken of the time given, reason."""
        return [(f"stage {r['stage']} {r['name']}", f"{r['status']}"
                 + (f" in {r['wall_s']:.0f}s of {r['given_s']:.0f}s" if "wall_s" in r else "")
                 + (f" ({r['reason']})" if r.get("reason") else ""))
                for r in self.summary["stages"]]

    def closing_lines(self) -> list[tuple[str, str]]:
        """Table rows for what ``out`` holds and the time taken of the budget."""
        oc, s = self.summary.get("out_check", {}), self.summary
        return [("OUT", f"{len(oc.get('files', []))} files, {oc.get('bytes', 0) / 2**20:.1f} MiB, "
                        f"{'ok' if oc.get('ok') else oc.get('problems')}"),
                ("total script time", f"{s.get('total_s', self.elapsed()):.0f}s of "
                                      f"{self.budget_s:.0f}s budget")]


def print_table(lines: list[tuple[str, object]]) -> None:
    """Two aligned columns between rules."""
    w = max(len(k) for k, _ in lines)
    print("\n" + "=" * (w + 40))
    for k, v in lines:
        print(f"{k:<{w}}  {v}")
    print("=" * (w + 40), flush=True)
