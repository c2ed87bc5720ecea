"""``clinisynth curate`` in this process, killed with SIGKILL at a chosen point (tests/test_curate.py).

Usage: python tests/_curate_drill.py CAMPAIGN OUT WHERE N [CURATE OPTIONS...]
    WHERE = generate: right after the N-th candidate PNG of the campaign is saved;
    WHERE = store: right after the N-th image is written into ordered storage, before its metadata line;
    WHERE = journal: when the N-th run has finished (trace complete), before the journal records it;
    WHERE = none: not killed.
The options after N go to ``clinisynth curate`` (``--workers 2``: the driver of Ray workers is killed; a ``store``
point then counts the images the driver files, the workers never write the dataset).
"""

from __future__ import annotations

import sys

from _kill_drill import kill_at  # PYTHONPATH holds tests/ (see test_curate._env)


def main() -> None:
    campaign, out, where, after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if where not in ("generate", "store", "journal", "none"):
        raise SystemExit(f"unknown WHERE {where!r}")
    tick = kill_at(where, after)
    if where == "journal":
        from clinisynth.curation.journal import Journal

        finish = Journal.finish_run

        def die_before_recording(self, *args, **kwargs):
            tick()
            return finish(self, *args, **kwargs)

        Journal.finish_run = die_before_recording
    from clinisynth.cli.main import app

    app(["curate", campaign, "--out", out, *sys.argv[5:]])


if __name__ == "__main__":
    main()
