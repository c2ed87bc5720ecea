"""``clinisynth curate`` in this process, killed with SIGKILL at a chosen point (tests/test_curate.py).

Usage: python tests/_curate_drill.py CAMPAIGN OUT WHERE N
    WHERE = generate: right after the N-th candidate PNG of the campaign is saved;
    WHERE = store: right after the N-th image is written into ordered storage, before its metadata line;
    WHERE = journal: when the N-th run has finished (trace complete), before the journal records it;
    WHERE = none: not killed.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def main() -> None:
    campaign, out, where, after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
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
    elif where == "journal":
        from clinisynth.curation.journal import Journal

        finish = Journal.finish_run

        def die_before_recording(self, *args, **kwargs):
            tick()
            return finish(self, *args, **kwargs)

        Journal.finish_run = die_before_recording
    elif where != "none":
        raise SystemExit(f"unknown WHERE {where!r}")
    from clinisynth.cli.main import app

    app(["curate", campaign, "--out", out])


if __name__ == "__main__":
    main()
