"""Adapters in campaigns (issue 13), in process on the tiny profile: the campaign-wide list, an item's own list
replacing it, an adapter not trained on an item's label rejecting that item with its line, and the choice recorded
in each run's trace and every image's metadata."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _adapter_helpers import make_adapter
from clinisynth.curation.spec import CampaignError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def adapters(cache_dir, tmp_path_factory) -> dict[str, Path]:
    from clinisynth.api import load_generator
    from clinisynth.settings import Settings

    generator, _ = load_generator(profile="tiny", settings=Settings(cache_dir=cache_dir))
    folder = tmp_path_factory.mktemp("adapters")
    return {"pneumonia": make_adapter(folder / "pneumonia_only", generator, seed=3, labels=["pneumonia"]),
            "both": make_adapter(folder / "both", generator, seed=4, labels=["pneumonia", "normal"])}


def _campaign(folder: Path, text: str) -> Path:
    path = folder / "campaign.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _curate(campaign: Path, out: Path, cache_dir: Path):
    import clinisynth
    from clinisynth.settings import Settings

    return clinisynth.curate(campaign, out=out, settings=Settings(cache_dir=cache_dir))


def test_campaign_and_item_adapters_draw_their_items_and_are_recorded(cache_dir, tmp_path, adapters):
    campaign = _campaign(tmp_path, f"""\
profile: tiny
steps: 2
adapters: ["{adapters['pneumonia']}:0.8"]
items:
  - description: "right lower lobe pneumonia, PA chest radiograph"
    count: 1
  - description: "normal chest radiograph"
    count: 1
    adapters: ["{adapters['both']}"]
  - description: "normal chest radiograph"
    id: plain
    count: 1
    adapters: []
""")
    out = tmp_path / "out"
    result = _curate(campaign, out, cache_dir)
    assert result.complete and result.counts["stored"] == 3
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    by_request = {}
    for record in records:
        by_request.setdefault(record["request"], []).append([(a["name"], a["weight"]) for a in record["adapters"]])
    assert by_request["right lower lobe pneumonia, PA chest radiograph"] == [[("pneumonia_only", 0.8)]]
    assert sorted(by_request["normal chest radiograph"]) == [[], [("both", 1.0)]]  # its own; none (the shipped set)
    modes = {}
    for run_dir in (out / "runs").iterdir():
        trace = json.loads((run_dir / "trace.json").read_text())
        modes[(trace["request"], trace["adapters"]["mode"])] = [a["name"] for a in trace["parameters"]["adapters"]]
    assert modes == {("right lower lobe pneumonia, PA chest radiograph", "named"): ["pneumonia_only"],
                     ("normal chest radiograph", "named"): ["both"], ("normal chest radiograph", "none"): []}


def test_an_adapter_not_trained_on_an_items_label_rejects_that_item_with_its_line(cache_dir, tmp_path, adapters):
    campaign = _campaign(tmp_path, f"""\
profile: tiny
steps: 2
adapters: ["{adapters['pneumonia']}"]
items:
  - description: "right lower lobe pneumonia, PA chest radiograph"
    count: 1
  - description: "normal chest radiograph"
    count: 1
""")
    out = tmp_path / "out"
    with pytest.raises(CampaignError) as refused:
        _curate(campaign, out, cache_dir)
    (problem,) = refused.value.problems
    assert problem.startswith("campaign.yaml:7: ") and "was not trained on" in problem and "'normal'" in problem
    assert not out.exists()
