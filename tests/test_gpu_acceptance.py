"""The GPU acceptance script on the CPU: its --dry-run (every stage on tiny synthetic data, the
same code paths), a budget small enough to force a timeout, the limits on what $OUT may hold,
and the process-group kill that takes a stage's workers down with it."""

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_acceptance.sh"


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_acceptance",
                                                  ROOT / "scripts" / "gpu_acceptance.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclass looks its module up there
    spec.loader.exec_module(mod)
    return mod


def _run(tmp_path, *args, timeout=300):
    # gradio is not on the device machine: a stand-in that refuses to import proves that
    # nothing the script runs needs it.
    fake = tmp_path / "no-gradio" / "gradio"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('gradio must not be imported here')\n")
    env = {**os.environ, "OMP_NUM_THREADS": "2",
           "PYTHONPATH": str(tmp_path / "no-gradio"), "PYTHON": sys.executable}
    out = tmp_path / "out"
    r = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(out),
                        "--work", str(tmp_path / "work"), *args],
                       capture_output=True, text=True, timeout=timeout, env=env)
    return r, out


def check_out_limits(out: Path) -> list[str]:
    """What the device machine returns from $OUT: at most 8 files, each at most 16 MiB, 64 MiB
    in all, at most two folders deep; results.tar.gz at most 15 MB."""
    files = [p for p in out.rglob("*") if not p.is_dir()]
    assert 0 < len(files) <= 8, files
    assert all(p.is_file() and not p.is_symlink() for p in files)
    assert all(p.stat().st_size <= 16 * 2**20 for p in files)
    assert sum(p.stat().st_size for p in files) <= 64 * 2**20
    assert all(len(p.relative_to(out).parts) <= 3 for p in files)
    assert (out / "results.tar.gz").stat().st_size <= 15 * 10**6
    assert not any(p.name.endswith((".pt", ".onnx")) for p in files)  # checkpoints stay out
    return sorted(str(p.relative_to(out)) for p in files)


def tar_names(out: Path) -> set[str]:
    with tarfile.open(out / "results.tar.gz") as tar:
        return set(tar.getnames())


def test_gpu_acceptance_dry_run(tmp_path):
    r, out = _run(tmp_path)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["dry_run"] is True and s["cpu_only"] is True
    assert [st["name"] for st in s["stages"]] == ["smoke", "headline", "export", "study"]
    assert all(st["status"] == "ok" and st["group_gone"] for st in s["stages"]), s["stages"]
    env = s["environment"]
    for key in ("torch", "cuda", "cudnn", "gpu", "onnxruntime_providers", "tensorrt"):
        assert key in env
    # 0. smoke: loader on the "device" equals the CPU, bf16 + compile steps, export, throughput
    sm = s["smoke"]
    assert sm["loader"]["ok"] and sm["loader"]["gather_equal"] and sm["loader"]["cpu_only"]
    assert sm["train"]["steps"] == 20 and sm["train"]["amp"] is True
    assert sm["train"]["compile"] == "compiled" and sm["train"]["best_val_accuracy"] is not None
    assert sm["export"]["status"] == "PASS"
    rows = sm["throughput"]["rows"]
    assert [r_["compile"] for r_ in rows[:2]] == [False, True]
    assert all(r_["images_per_s"] > 0 and r_["cpu_only"] for r_ in rows[:2])
    # 1. headline
    h = s["headline"]
    # The tiny model learns the synthetic images, so the export parity below is meaningful.
    assert h["finished"] and 0.5 < h["test_accuracy"] <= 1 and h["epochs"] == 8
    assert h["process_wall_s"] >= h["train_time_s"] > 0 and h["compile"] == "compiled"
    # 2. export, parity, inference
    e = s["export"]
    assert e["status"] == "PASS" and e["parity"]["status"] == "PASS"
    assert e["tensorrt"].startswith("skipped")
    assert any("images_per_s" in row for row in e["inference"])
    # 3. study (shrunk)
    assert set(s["study"]["splits"]) == {"0.5"} and s["study"]["report"]
    # the fp16 model + manifest, and the $OUT limits
    m = s["model_fp16"]
    assert m["manifest"] == "vgg16-fp16.json" and m["from"] == "best.pt"
    files = check_out_limits(out)
    assert set(files) == {"summary.json", "results.tar.gz", *m["files"]}
    assert s["out_check"]["ok"] and s["out_check"]["files"] == files
    names = tar_names(out)
    for f in ("logs/1-headline.log", "logs/0-smoke.log", "logs/acceptance.log",
              "headline/metrics.csv", "headline/summary.json", "headline/curves.png",
              "export/parity.json", "stages/smoke.json", "study/report.md", "summary.json"):
        assert f"results/{f}" in names, f
    with tarfile.open(out / "results.tar.gz") as tar:
        log = tar.extractfile("results/logs/1-headline.log").read().decode()
    assert "train_loss" in log and "val_acc" in log  # the epoch table
    assert "gradio" not in r.stdout + r.stderr
    assert "total script time" in r.stdout.splitlines()[-2]
    # data, cache and checkpoints lived in the work folder
    assert (tmp_path / "work" / "runs" / "headline" / "last.pt").exists()


def test_gpu_acceptance_forced_timeout_keeps_partial_results(tmp_path):
    # The headline can never finish 100,000 epochs: the deadline kills it (or the smoke stage,
    # on a very slow machine), and what ran is in the summary and the tarball.
    t = time.perf_counter()
    r, out = _run(tmp_path, "--budget-s", "40", "--epochs", "100000")
    wall = time.perf_counter() - t
    assert r.returncode == 1, r.stdout[-4000:] + r.stderr[-3000:]
    assert wall < 40 + 60  # the budget, plus start-up and teardown
    s = json.loads((out / "summary.json").read_text())
    status = {st["name"]: st["status"] for st in s["stages"]}
    assert "timeout" in status.values(), status
    assert status["headline"] in ("timeout", "skipped")
    first = list(status.values()).index("timeout")
    assert all(v == "ok" for v in list(status.values())[:first])
    assert all(v == "skipped" for v in list(status.values())[first + 1:])
    for st in s["stages"]:
        if st["status"] == "timeout":
            assert st["group_gone"] and st["reason"].startswith("killed")
            assert f"results/{st['log']}" in tar_names(out)
        if st["status"] == "skipped":
            assert "left before the deadline" in st["reason"]
    if status["headline"] == "timeout":
        assert s["headline"]["finished"] is False and "timeout" in s["headline"]["partial"]
    assert s["out_check"]["ok"], s["out_check"]
    check_out_limits(out)


def test_a_timed_out_stage_takes_its_workers_down(tmp_path):
    """A stage that started a worker of its own (like vgg-study's split process): the timeout
    kills the whole process group, the worker too."""
    from vggcifar.procs import run_group

    pidfile = tmp_path / "worker.pid"
    child = ("import subprocess, sys, time; "
             "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
             f"open({str(pidfile)!r}, 'w').write(str(w.pid)); time.sleep(120)")
    r = run_group([sys.executable, "-c", child], tmp_path / "stage.log", timeout=3)
    assert r["status"] == "timeout" and r["rc"] is None and r["group_gone"]
    worker = int(pidfile.read_text())
    try:
        state = Path(f"/proc/{worker}/status").read_text()
        assert "\nState:\tZ" in state  # killed, not yet reaped by init
    except FileNotFoundError:
        pass
    assert "timeout" in (tmp_path / "stage.log").read_text()


def test_usage_errors(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_acceptance.py"), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "--archive" in r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_acceptance.py"), "--dry-run",
                        "--out", str(tmp_path / "o"), "--work", str(tmp_path / "o" / "w")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "outside" in r.stderr


def test_stage_table_at_the_top_matches_the_stages():
    ga = _load_script()
    head = ga.__doc__
    for st in ga.STAGES:
        cap = "rest" if st.cap_s == float("inf") else f"{st.cap_s:.0f}"
        assert any(line.split()[:3] == [str(st.num), st.name, cap]
                   for line in head.splitlines() if line.strip()), st


def test_results_tarball_keeps_to_its_budget_and_the_folder_check_names_problems(tmp_path):
    from vggcifar.timebox import Limits, check_folder, write_tarball

    lim = Limits(max_files=2, max_file_bytes=1000, tar_member_budget=1500, log_tail_bytes=400)
    (tmp_path / "a.log").write_bytes(b"x" * 1000)
    (tmp_path / "big.bin").write_bytes(b"y" * 1200)
    (tmp_path / "s.txt").write_text("hi")
    out = tmp_path / "out"
    out.mkdir()
    members = [("logs/a.log", tmp_path / "a.log"), ("big.bin", tmp_path / "big.bin"),
               ("s.txt", tmp_path / "s.txt")]
    write_tarball(members, out / "results.tar.gz", lim)
    with tarfile.open(out / "results.tar.gz") as tar:
        assert tar.getnames() == ["results/logs/a.log", "results/s.txt", "results/LEFT_OUT.txt"]
        assert len(tar.extractfile("results/logs/a.log").read()) < 500  # head and tail only
        assert "big.bin" in tar.extractfile("results/LEFT_OUT.txt").read().decode()
    assert check_folder(out, lim)["ok"]
    (out / "x").write_bytes(b"0" * 2000)
    (out / "y").write_text("y")
    problems = check_folder(out, lim)["problems"]
    assert len(problems) == 2 and "3 files" in problems[0] and problems[1].startswith("x:")


def test_timebox_runs_a_stage_and_skips_one_without_time(tmp_path):
    from vggcifar.timebox import Stage, Timebox

    stages = [Stage(0, "a", 30, 0, "prints"), Stage(1, "b", 30, 60, "needs a minute")]
    tb = Timebox(stages, tmp_path / "out", tmp_path / "work", budget_s=20, reserve_s=1, name="t")
    tb.run_stages(lambda name: ([sys.executable, "-c", "print('hi')"], "hi"),
                  lambda name, r: {"rc": r["rc"]})
    s = tb.summary
    assert [r["status"] for r in s["stages"]] == ["ok", "skipped"] and tb.passed()
    assert s["a"] == {"rc": 0} and "needs 60s" in s["stages"][1]["reason"]
    assert "hi" in (tmp_path / "work" / "logs" / "0-a.log").read_text()
    check = tb.finish(remove_work=True)
    assert check["ok"] and check["files"] == ["results.tar.gz", "summary.json"]
    assert not (tmp_path / "work").exists()


def test_caps_and_budget_must_be_finite(tmp_path):
    import pytest

    from vggcifar.timebox import Stage, parse_caps

    stages = [Stage(0, "a", 30, 0, "x")]
    assert parse_caps(stages, ["a=12"]) == {"a": 12.0}
    for bad in ("nan", "inf", "-1", "soon"):  # nan: killed at once; inf: no deadline
        with pytest.raises(ValueError, match="stage a"):
            parse_caps(stages, [f"a={bad}"])
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_acceptance.py"), "--dry-run",
                        "--out", str(tmp_path / "o"), "--budget-s", "nan"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--budget-s must be a finite" in r.stderr


_SIGNAL_PARENT = r"""
import signal, sys
from pathlib import Path
from vggcifar.timebox import Stage, Timebox
tmp = Path(sys.argv[1])
# the stage ignores SIGTERM, so only the SIGKILL step ends it
cmd = ["sh", "-c", f"echo $$ > {tmp}/child.pid; trap '' TERM; exec sleep 60"]
tb = Timebox([Stage(0, "a", 60, 0, "sleeps")], tmp / "out", tmp / "work", budget_s=60,
             reserve_s=1, name="t")
tb.run(lambda: tb.run_stages(lambda name: (cmd, "x"), lambda name, r: {}) or True,
       remove_work=False)
"""


def _start_signal_parent(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    p = subprocess.Popen([sys.executable, "-c", _SIGNAL_PARENT, str(tmp_path)], env=env)
    pidfile = tmp_path / "child.pid"
    for _ in range(200):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        time.sleep(0.05)
    time.sleep(0.3)
    return p, int(pidfile.read_text())


def _gone(pid: int) -> bool:
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def test_a_second_sigterm_does_not_leave_the_stage_running(tmp_path):
    # the second signal came inside kill_group's grace period and skipped the SIGKILL
    p, child = _start_signal_parent(tmp_path)
    p.send_signal(15)
    time.sleep(0.4)
    p.send_signal(15)
    p.wait(timeout=30)
    time.sleep(0.2)
    assert _gone(child), "the stage's process outlived its parent"
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["stages"][0]["status"] == "interrupted"


def test_sighup_is_an_interrupt_too(tmp_path):
    # a dropped ssh session: summary.json said "running" and the stage kept running
    p, child = _start_signal_parent(tmp_path)
    p.send_signal(1)
    p.wait(timeout=30)
    time.sleep(0.2)
    assert _gone(child)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["stages"][0]["status"] == "interrupted"
    assert any("interrupted" in n for n in summary["notes"])
