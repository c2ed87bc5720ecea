"""``clinisynth generate`` in this process, killed with SIGKILL at a chosen point (tests/test_resume.py).

Usage: python tests/_kill_drill.py OUT WHERE N
    WHERE = generate: right after the N-th candidate PNG of the run is saved;
    WHERE = store: right after the N-th image is written into ordered storage, before its metadata line.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

REQUEST = "moderate right pleural effusion with basal atelectasis, PA chest radiograph"


def kill_at(where: str, after: int) -> "callable":
    """Arrange a SIGKILL of this process at the ``after``-th candidate save (``generate``) or stored PNG
    (``store``); ``none`` kills nothing. Returns the ``tick`` that counts towards the kill, for other points."""
    seen = [0]

    def tick() -> None:
        seen[0] += 1
        if seen[0] == after:
            os.kill(os.getpid(), signal.SIGKILL)

    if where == "generate":
        from clinisynth.agents import nodes

        save = nodes._save_png_atomically

        def save_then_maybe_die(image, path):
            save(image, path)
            tick()

        nodes._save_png_atomically = save_then_maybe_die
    elif where == "store":
        from clinisynth.generation import storage

        write = storage.write_atomically

        def write_then_maybe_die(path, data):
            write(path, data)
            if Path(path).suffix == ".png":
                tick()

        storage.write_atomically = write_then_maybe_die
    return tick


def main() -> None:
    out, where, after = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if where not in ("generate", "store", "none"):
        raise SystemExit(f"unknown WHERE {where!r}")
    kill_at(where, after)
    from clinisynth.cli.main import app

    app(["generate", REQUEST, "-n", "4", "--out", out, "--seed", "11", "--profile", "tiny"])


if __name__ == "__main__":
    main()
