"""Cold start of the CLI in fresh processes, against a bare ``python -c pass`` measured in the same run:

- ``clinisynth --help`` (target: under 1.0 s);
- ``clinisynth plan TEXT`` of a description the lexicon resolves (target: under 2.0 s) and of one that
  needs retrieval, i.e. the embedder (target: under 4.0 s).

Each ``plan`` runs against a private cache folder (``CLINISYNTH_CACHE_DIR``, never your own cache). The
retrieval index is built there once first (reported, not counted: ``clinisynth knowledge build-index``);
then, per description, the first run finds the knowledge and lexicon caches empty ("cold cache") and the
``--repeat`` runs after it find them filled ("warm cache", median).

    python benchmarks/bench_cli_startup.py [--repeat 10] [--knowledge-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine

LEXICON_TEXT = "small left pneumothorax, PA chest radiograph"
#: A misspelling beyond the lexicon's one-edit corrections: the plan's notes say "'pnuemothorx' resolved by retrieval".
RETRIEVAL_TEXT = "pnuemothorx, PA chest radiograph"
CLI = [sys.executable, "-m", "clinisynth.cli.main"]


def _run(command: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return time.perf_counter() - started, done.stdout


def _time(command: list[str], repeat: int, env: dict[str, str] | None = None) -> list[float]:
    return [_run(command, env)[0] for _ in range(repeat)]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def _check(text: str, stdout: str, *, retrieval: bool) -> None:
    notes = " ".join(json.loads(stdout).get("notes", []))
    if retrieval != ("resolved by retrieval" in notes):
        raise SystemExit(f"{text!r} was expected {'' if retrieval else 'not '}to need retrieval; notes: {notes!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--knowledge-dir", type=Path, default=None,
                        help="knowledge folder for the plan runs (default: the packaged one)")
    args = parser.parse_args()
    baseline = _time([sys.executable, "-c", "pass"], args.repeat)
    cli = _time([*CLI, "--help"], args.repeat)
    print(f"machine: {machine()}")
    print(f"python -c pass      median {_ms(statistics.median(baseline))}")
    print(f"clinisynth --help   median {_ms(statistics.median(cli))}  (target < 1000 ms)")
    print(f"ratio clinisynth/python: {statistics.median(cli) / statistics.median(baseline):.1f}x")

    cache = Path(tempfile.mkdtemp(prefix="clinisynth-bench-cache-"))
    env = {**os.environ, "CLINISYNTH_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    if args.knowledge_dir is not None:
        env["CLINISYNTH_KNOWLEDGE_DIR"] = str(args.knowledge_dir.resolve())
    try:
        index_s, _ = _run([*CLI, "knowledge", "build-index"], env)
        print(f"retrieval index build (one-off, not counted) {index_s:.1f} s")
        for name, text, retrieval, target in (("lexicon", LEXICON_TEXT, False, 2.0),
                                               ("retrieval", RETRIEVAL_TEXT, True, 4.0)):
            for folder in ("knowledge", "lexicon"):
                shutil.rmtree(cache / folder, ignore_errors=True)
            command = [*CLI, "plan", "--json", text]
            cold, stdout = _run(command, env)
            _check(text, stdout, retrieval=retrieval)
            warm = _time(command, args.repeat, env)
            print(f"plan ({name}: {text!r})")
            print(f"  cold cache          {_ms(cold)}")
            print(f"  warm cache   median {_ms(statistics.median(warm))}  min {_ms(min(warm))}  "
                  f"max {_ms(max(warm))}  (target < {target * 1000:.0f} ms)")
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
