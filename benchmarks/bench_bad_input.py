"""Every bad input of every command, run as a real process and classified (issue 15): the bad-input table.

Each case of ``tests/_bad_input_cases.py`` (the entry-point table, generate's and curate's README tables) runs as
``python -m clinisynth.cli.main ...`` in a fresh folder, and its outcome is one of:

- ``clean``: exit code 2, exactly one ``error:`` line (stderr starts with it), nothing on stdout, nothing written;
- ``traceback``: a Python traceback on stderr;
- ``silent``: exit code 0 (the bad input was taken as good);
- ``other``: anything else (exit 1 without a traceback, several error lines, files written ...), with why.

Target: 0 tracebacks, 0 silent. ``--baseline-path DIR`` runs the same cases a second time against another
install of clinisynth (``pip install --no-deps --target DIR <checkout of the base commit>``; put first on
``PYTHONPATH``), for the before / after table in BENCHMARKS.md.

Run from the repository root with the test extras installed::

    python benchmarks/bench_bad_input.py [--tables entry,generate,campaign] [--baseline-path DIR] [--details]
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _bad_input_cases import (CAMPAIGN_CASES, ENTRY_CASES, GENERATE_CASES, Case, build_adapter_libraries,  # noqa: E402
                              error_lines, generate_argv, journal_setup, placed, prepare_folder, snapshot)
from _common import machine  # noqa: E402

#: Seconds a case may run; one that runs longer has surely not refused its input before working.
TIMEOUT_S = 300
TIMED_OUT = -1
#: Where a read-only output lies when this runs as root (who writes into any folder whatever its mode).
READ_ONLY_AS_ROOT = "/sys/clinisynth-read-only"


def classify(code: int, stdout: str, stderr: str, *, changed: bool) -> tuple[str, str]:
    """(outcome, why) of one run."""
    if "Traceback (most recent call last)" in stderr:
        last = [line for line in stderr.strip().splitlines() if line.strip()]
        return "traceback", last[-1][:160] if last else ""
    if code == 0:
        return "silent", (stdout.strip().splitlines() or [""])[-1][:160]
    errors = error_lines(stderr)
    problems = []
    if code == TIMED_OUT:
        problems.append(f"still running after {TIMEOUT_S} s")
    elif code != 2:
        problems.append(f"exit {code}")
    if len(errors) != 1 or not stderr.startswith("error: "):
        problems.append(f"{len(errors)} error lines, stderr starts {stderr[:40]!r}")
    if stdout:
        problems.append(f"stdout {stdout[:40]!r}")
    if changed:
        problems.append("wrote or changed files")
    return ("other", "; ".join(problems)) if problems else ("clean", errors[0][:160])


def run(argv: list[str], *, cwd: Path, env: dict, python_path: str | None) -> tuple[int, str, str, float]:
    full = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "CLINISYNTH_PROFILE": "tiny",
            "PYTHONSAFEPATH": "1", **env}
    full = {key: value for key, value in full.items() if value is not None}
    if python_path:
        full["PYTHONPATH"] = python_path
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "clinisynth.cli.main", *argv], cwd=cwd, env=full,
                              capture_output=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as expired:
        return (TIMED_OUT, (expired.stdout or b"").decode(errors="replace"),
                (expired.stderr or b"").decode(errors="replace"), time.perf_counter() - started)
    return (done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"),
            time.perf_counter() - started)


def entry_runs(cache_dir: Path, work: Path):
    """(table, name, argv, env, folder, skip reason) of every entry-point case, its folder prepared."""
    import torch

    for number, case in enumerate(ENTRY_CASES):
        folder = work / f"entry-{number:03d}"
        folder.mkdir()
        prepare_folder(folder, case)
        argv = [placed(arg, folder) for arg in case.argv]
        if "locked" in case.setup:
            if os.geteuid() == 0:
                argv = [arg.replace(str(folder / "locked"), READ_ONLY_AS_ROOT) for arg in argv]
            else:
                (folder / "locked").chmod(0o500)
        env = {"CLINISYNTH_CACHE_DIR": str(cache_dir), "CLINISYNTH_CONFIG": None,
               **{key: placed(value, folder) for key, value in case.env.items()}}
        skip = "a good input with a CUDA GPU" if case.needs_no_gpu and torch.cuda.is_available() else None
        if any("\0" in arg for arg in argv):
            skip = "a NUL cannot be passed in argv (tests/test_bad_input.py runs it in-process)"
        yield "entry", case.name, argv, env, folder, skip


def generate_runs(cache_dir: Path, work: Path, libraries: dict[str, Path]):
    for phrase, cases in GENERATE_CASES.items():
        for number, case in enumerate(cases):
            folder = work / f"generate-{len(list(work.iterdir())):03d}"
            folder.mkdir()
            (folder / "a-file").write_text("keep me", encoding="utf-8")
            (folder / "empty-generator").mkdir()
            out = str(folder / case.get("out", "out"))
            if case.get("setup") == "unwritable":
                (folder / "locked").mkdir()
                if os.geteuid() == 0:
                    out = READ_ONLY_AS_ROOT + "/out"
                else:
                    (folder / "locked").chmod(0o500)
            places = {"{tmp}": str(folder), **{key: str(path) for key, path in libraries.items()}}
            env = {"CLINISYNTH_CACHE_DIR": str(cache_dir), "CLINISYNTH_CONFIG": None}
            for key, value in case.get("env", {}).items():
                for placeholder, path in places.items():
                    value = value.replace(placeholder, path)
                env[key] = value
            yield "generate", f"{phrase} #{number}", generate_argv(case, out=out, places=places), env, folder, None


def campaign_runs(cache_dir: Path, work: Path):
    for phrase, cases in CAMPAIGN_CASES.items():
        for number, case in enumerate(cases):
            folder = work / f"campaign-{len(list(work.iterdir())):03d}"
            folder.mkdir()
            campaign, out = folder / "campaign.yaml", folder / "out"
            campaign.write_text(case["campaign"], encoding="utf-8")
            if "rows" in case:
                (folder / "rows.csv").write_text(case["rows"], encoding="utf-8")
            if "setup" in case:
                journal_setup(case["setup"], out, campaign)
            env = {"CLINISYNTH_CACHE_DIR": str(cache_dir), "CLINISYNTH_CONFIG": None}
            yield "campaign", f"{phrase} #{number}", ["curate", str(campaign), "--out", str(out)], env, folder, None


def measure(tables: list[str], *, cache_dir: Path, python_path: str | None, label: str, details: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-bad-input-") as scratch:
        scratch = Path(scratch)
        work = scratch / "cases"
        work.mkdir()
        runs = []
        if "entry" in tables:
            runs += list(entry_runs(cache_dir, work))
        if "generate" in tables:
            libraries = build_adapter_libraries(cache_dir, scratch / "libraries")
            runs += list(generate_runs(cache_dir, work, libraries))
        if "campaign" in tables:
            runs += list(campaign_runs(cache_dir, work))
        counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        failures, seconds = [], []
        for table, name, argv, env, folder, skip in runs:
            if skip:
                counts[table]["skipped"] += 1
                if details:
                    print(f"[{label}] skipped            {table:8s} {name}  ->  {skip}", flush=True)
                continue
            before = snapshot(folder)
            code, stdout, stderr, took = run(argv, cwd=folder, env=env, python_path=python_path)
            if (folder / "locked").exists():
                (folder / "locked").chmod(0o700)
            outcome, why = classify(code, stdout, stderr, changed=snapshot(folder) != before)
            counts[table][outcome] += 1
            counts[table]["tried"] += 1
            seconds.append(took)
            if outcome != "clean":
                failures.append((table, outcome, name, why))
            if details:
                print(f"[{label}] {outcome:9s} {took:5.1f} s  {table:8s} {name}  ->  {why}", flush=True)
    return {"counts": counts, "failures": failures, "seconds": seconds}


def table(results: dict, label: str) -> str:
    lines = [f"| {label} | tried | clean error | traceback | silent | other |", "|---|---|---|---|---|---|"]
    if not results["counts"]:
        return "\n".join(lines)
    total = collections.Counter()
    for name, counts in sorted(results["counts"].items()):
        total.update(counts)
        lines.append(f"| {name} | {counts['tried']} | {counts['clean']} | {counts['traceback']} | {counts['silent']} "
                     f"| {counts['other']} |")
    lines.append(f"| **all** | **{total['tried']}** | **{total['clean']}** | **{total['traceback']}** | "
                 f"**{total['silent']}** | **{total['other']}** |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", default="entry,generate,campaign", help="which case tables to run")
    parser.add_argument("--baseline-path", help="PYTHONPATH of another clinisynth install to run the same cases on")
    parser.add_argument("--baseline-tables", default=None, help="tables for the baseline (default: --tables)")
    parser.add_argument("--details", action="store_true", help="print every case as it runs")
    args = parser.parse_args()
    tables = args.tables.split(",")
    print(f"machine: {machine()}")
    cache = tempfile.TemporaryDirectory(prefix="bench-bad-input-cache-")
    cache_dir = Path(cache.name)
    # One cache for every case and both installs: the retrieval index is built once here, not inside a case.
    started = time.perf_counter()
    code, _, stderr, _ = run(["knowledge", "build-index"], cwd=cache_dir,
                             env={"CLINISYNTH_CACHE_DIR": str(cache_dir), "CLINISYNTH_CONFIG": None}, python_path=None)
    print(f"retrieval index built in {time.perf_counter() - started:.0f} s (exit {code})", flush=True)
    started = time.perf_counter()
    results = measure(tables, cache_dir=cache_dir, python_path=None, label="now", details=args.details)
    print(f"\nnow ({time.perf_counter() - started:.0f} s, median {sorted(results['seconds'])[len(results['seconds']) // 2]:.2f} s a case)")
    print(table(results, "now"))
    for table_name, outcome, name, why in results["failures"]:
        print(f"  {outcome}: [{table_name}] {name} -> {why}")
    if args.baseline_path:
        started = time.perf_counter()
        baseline = measure((args.baseline_tables or args.tables).split(","), cache_dir=cache_dir,
                           python_path=args.baseline_path, label="baseline", details=args.details)
        print(f"\nbaseline {args.baseline_path} ({time.perf_counter() - started:.0f} s)")
        print(table(baseline, "baseline"))
        for table_name, outcome, name, why in baseline["failures"]:
            print(f"  {outcome}: [{table_name}] {name} -> {why}")
    cache.cleanup()


if __name__ == "__main__":
    main()
