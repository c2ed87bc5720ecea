"""Curation campaigns (issue 13): a campaign file to a balanced, verified dataset, resumable.

``spec`` reads and checks the campaign file, ``journal`` keeps what was decided and done (SQLite),
``scheduler`` plans every item then runs its slots through a worker, ``worker`` is one loaded generator +
verifier running one chunk of slots, ``report`` writes ``DIR/campaign/report.md`` / ``report.json`` and plots;
``ray_workers`` runs the chunks on Ray actors, ``remote`` is the split of a chunk between such a worker (generate,
verify, return) and the driver (file, in campaign order), ``adapters`` the campaign's and items' LoRA adapters.
Everything here takes explicit arguments; ``clinisynth.campaigns`` builds them from the settings.
"""
