"""The campaign file: a pydantic model read from YAML with the line of every key, so each problem names its line.

The smallest campaign::

    profile: tiny
    seed: 0
    items:
      - description: "right lower lobe pneumonia, PA chest radiograph"
        count: 3
      - description: "normal chest radiograph"
        count: 2

Items are listed inline (``items``), read from a CSV or JSONL file (``items_file``, relative to the campaign
file; a ``description`` column / key, optional ``count`` and ``id``), or both. Each item has a count, or the
campaign a default ``count``, or a ``balance`` target gives the counts once every item is planned: ``per_label:
N`` (N images of every label the items plan to) or ``match: DIR`` (the class distribution of a prepared real
dataset's ``manifest.csv``, ``total`` images in all, the dataset's size when unset).

``adapters`` (campaign-wide, or an item's own) name LoRA adapters as ``generate --adapter`` does
(``curation/adapters.py``).

:func:`load_campaign` refuses unknown keys, wrong types and out-of-range numbers, every problem with its line.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from clinisynth.generation import limits

#: Images of one item, and of one campaign.
MAX_ITEM_COUNT = 100_000
MAX_CAMPAIGN_IMAGES = 10_000_000
#: Slots of one generation run (an item's slots are run in chunks of this many).
DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE = 16, 1000
ITEM_FILE_SUFFIXES = (".csv", ".jsonl")
ITEM_FILE_KEYS = ("description", "count", "id")


class CampaignError(ValueError):
    """A campaign that cannot be run: each problem with where it is (``file:line: why``).

    A user error: the CLI prints the first line after ``error:`` and the others indented, exit code 2.
    """

    def __init__(self, problems: list[str] | str, *, headline: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if headline is None:
            headline = self.problems[0] if len(self.problems) == 1 else f"{len(self.problems)} problems, nothing run:"
        lines = [headline] + ([] if len(self.problems) == 1 and headline == self.problems[0] else self.problems)
        super().__init__("\n".join(lines))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class Item(_Strict):
    """One description and how many verified images of it are wanted."""

    description: str = Field(min_length=1)
    count: int | None = Field(default=None, ge=1, le=MAX_ITEM_COUNT)
    id: str | None = Field(default=None, min_length=1, max_length=128)
    #: The item's own adapters; ``[]``: none named (the run path's choice by plan), whatever the campaign names.
    adapters: list[Annotated[str, Field(min_length=1)]] | None = None

    @field_validator("description")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the description is empty")
        return value


class Balance(_Strict):
    """Counts from a target instead of per item: ``per_label`` images of each label, or ``match`` a real dataset."""

    per_label: int | None = Field(default=None, ge=1, le=MAX_ITEM_COUNT)
    match: str | None = Field(default=None, min_length=1)
    total: int | None = Field(default=None, ge=1, le=MAX_CAMPAIGN_IMAGES)

    @model_validator(mode="after")
    def _one_target(self) -> "Balance":
        if (self.per_label is None) == (self.match is None):
            raise ValueError("give one of per_label (images of each label) or match (a prepared real dataset)")
        if self.total is not None and self.match is None:
            raise ValueError("total goes with match")
        return self


class Campaign(_Strict):
    """The campaign file's keys (every one optional except some items)."""

    name: str | None = Field(default=None, min_length=1, max_length=128)
    profile: str | None = None
    seed: int = Field(default=0, ge=0, le=2**40)
    items: list[Item] = Field(default_factory=list)
    items_file: str | None = Field(default=None, min_length=1)
    count: int | None = Field(default=None, ge=1, le=MAX_ITEM_COUNT)
    balance: Balance | None = None
    steps: int | None = Field(default=None, ge=limits.MIN_STEPS, le=limits.MAX_STEPS)
    guidance: float | None = Field(default=None, ge=limits.MIN_GUIDANCE, le=limits.MAX_GUIDANCE)
    max_rounds: int | None = Field(default=None, ge=limits.MIN_ROUNDS, le=limits.MAX_ROUNDS)
    best_of: int | None = Field(default=None, ge=limits.MIN_BEST_OF, le=limits.MAX_BEST_OF)
    verifier_thresholds: dict[str, dict[str, float]] = Field(default_factory=dict)
    adapters: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    chunk_size: int = Field(default=DEFAULT_CHUNK_SIZE, ge=1, le=MAX_CHUNK_SIZE)


@dataclass(frozen=True)
class Row:
    """One item as read, before planning.

    Args:
        key: the item's id: its ``id`` when given, else its 1-based position in the campaign (inline items
            first, then the file's rows). The per-slot seeds derive from the campaign seed and this.
        source, line: where it was read (the campaign file or the items file, 1-based line).
        count: ``None`` when a balance target decides it.
        adapters: the item's own adapters (``"NAME_OR_PATH[:WEIGHT]"``), ``None`` for the campaign's.
    """

    key: str
    source: str
    line: int
    description: str
    count: int | None
    adapters: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Rejected:
    """A row that cannot be run: where it is, its description and why (``DIR/campaign/rejected.csv``)."""

    source: str
    line: int
    description: str
    why: str

    def message(self) -> str:
        return f"{self.source}:{self.line}: {self.why}"


@dataclass(frozen=True)
class LoadedCampaign:
    """A checked campaign: the model, its rows, the file it came from and its fingerprint."""

    campaign: Campaign
    rows: list[Row]
    path: Path
    #: Row problems (an items file's bad row: line and why); refused, or skipped with ``--skip-invalid``.
    bad_rows: list[Rejected]

    @property
    def name(self) -> str:
        return self.campaign.name or self.path.stem

    def canonical(self) -> dict:
        """What identifies the campaign: its keys (defaults filled) and every row read, JSON-native."""
        return {
            "campaign": self.campaign.model_dump(mode="json", exclude={"items"}),
            "items": [{"key": r.key, "source": r.source, "line": r.line, "description": r.description,
                       "count": r.count, **({"adapters": list(r.adapters)} if r.adapters is not None else {})}
                      for r in self.rows],
            "bad_rows": [{"source": r.source, "line": r.line, "why": r.why} for r in self.bad_rows],
        }

    def adapters_of(self, key: str) -> list[str] | None:
        """The adapters item ``key`` draws with: its own, else the campaign's; ``None``: the choice by plan."""
        row = next((r for r in self.rows if r.key == key), None)
        if row is not None and row.adapters is not None:
            return list(row.adapters)
        return list(self.campaign.adapters) if self.campaign.adapters is not None else None

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.canonical(), sort_keys=True).encode("utf-8")).hexdigest()

    def balance_dir(self) -> Path | None:
        balance = self.campaign.balance
        if balance is None or balance.match is None:
            return None
        return (self.path.parent / balance.match).expanduser()


# --- YAML with line numbers ---------------------------------------------------------------------------------

def _compose(text: str, source: str):
    import yaml

    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise CampaignError(f"{where}: not valid YAML ({getattr(error, 'problem', None) or error})") from None


def _python(node, path: tuple, lines: dict[tuple, int], problems: list[str], source: str):
    """The plain value of a composed YAML node; ``lines[path]`` is the 1-based line of every key and list entry."""
    import yaml

    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        value = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(f"{source}:{key_node.start_mark.line + 1}: a key must be a plain name")
                continue
            key = key_node.value
            if key in value:
                problems.append(f"{source}:{key_node.start_mark.line + 1}: key {key!r} given twice")
                continue
            lines[(*path, key)] = key_node.start_mark.line + 1
            value[key] = _python(value_node, (*path, key), lines, problems, source)
        return value
    if isinstance(node, yaml.SequenceNode):
        return [_python(child, (*path, index), lines, problems, source) for index, child in enumerate(node.value)]
    loader = yaml.SafeLoader(io.StringIO(""))
    try:
        return loader.construct_object(node)
    finally:
        loader.dispose()


def _line_of(loc: tuple, lines: dict[tuple, int]) -> int:
    for end in range(len(loc), -1, -1):
        if tuple(loc[:end]) in lines:
            return lines[tuple(loc[:end])]
    return 1


def _where(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _messages(error: ValidationError, *, model: type[BaseModel], lines: dict[tuple, int], source: str,
              prefix: tuple = ()) -> list[tuple[int, str]]:
    found = []
    for entry in error.errors(include_url=False):
        loc = tuple(part for part in entry["loc"] if part not in ("function-after",))
        line = _line_of((*prefix, *loc), lines)
        where = _where((*prefix, *loc))
        if entry["type"] == "extra_forbidden":
            known = _known_keys(model, loc[:-1])
            found.append((line, f"{source}:{line}: unknown key {where!r} (known here: {', '.join(known)})"))
        else:
            message = _message(entry)
            found.append((line, f"{source}:{line}: {where}: {message}" if where else f"{source}:{line}: {message}"))
    return found


def _message(entry: dict) -> str:
    context = entry.get("ctx") or {}
    if entry["type"] == "greater_than_equal":
        return f"must be at least {context['ge']}, got {entry['input']!r}"
    if entry["type"] == "less_than_equal":
        return f"must be at most {context['le']} (the limit), got {entry['input']!r}"
    return entry["msg"].removeprefix("Value error, ")


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys the model takes at ``loc`` (a path of field names and list indexes)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if isinstance(current, type) and issubclass(current, BaseModel) else None
        if field is None:
            return []
        current = _model_in(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _model_in(annotation):
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None


# --- loading -------------------------------------------------------------------------------------------------

def load_campaign(path: Path | str) -> LoadedCampaign:
    """Read and check a campaign file (and its items file).

    Raises:
        CampaignError: every problem found, each as ``file:line: why`` (unknown keys, wrong types, counts out of
            range, items without a count, a balance target with counts, a missing items file ...). Bad rows
            of an items file are not raised here: they are in :attr:`LoadedCampaign.bad_rows`.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CampaignError(f"campaign file {path} does not exist")
    source = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CampaignError(f"campaign file {path} cannot be read ({error})") from None
    node = _compose(text, source)
    if node is None:
        raise CampaignError(f"{source}: the campaign file is empty; list some items (see the README's Curation "
                            "campaigns)")
    lines: dict[tuple, int] = {}
    problems: list[str] = []
    data = _python(node, (), lines, problems, source)
    if not isinstance(data, dict):
        raise CampaignError(f"{source}:1: a campaign is a mapping of keys (profile, seed, items, ...), not "
                            f"{type(data).__name__}")
    located: list[tuple[int, str]] = [(int(p.split(":")[1]), p) for p in problems]
    try:
        campaign = Campaign.model_validate(data)
    except ValidationError as error:
        located += _messages(error, model=Campaign, lines=lines, source=source)
        raise CampaignError([message for _, message in sorted(located)]) from None
    located += [(line, message) for line, message in _check_thresholds(campaign, lines, source)]

    rows: list[Row] = []
    for index, item in enumerate(campaign.items):
        line = lines.get(("items", index, "description"), lines.get(("items", index), 1))
        rows.append(Row(key=item.id or str(index + 1), source=source, line=line,
                        description=item.description, count=item.count,
                        adapters=tuple(item.adapters) if item.adapters is not None else None))
    bad_rows: list[Rejected] = []
    if campaign.items_file is not None:
        file_rows, bad_rows, file_problems = _read_items_file(path.parent / campaign.items_file,
                                                              first=len(rows) + 1,
                                                              line=lines[("items_file",)], source=source)
        located += file_problems
        rows += file_rows
    if not rows and not bad_rows and not located:
        located.append((1, f"{source}:1: the campaign lists no items: give items (description + count) or "
                           "items_file"))
    balance_line = lines.get(("balance",), 1)
    for row in rows:
        if campaign.balance is not None and row.count is not None:
            located.append((row.line, f"{row.source}:{row.line}: item {row.key} has a count and the campaign a "
                                      f"balance target (line {balance_line}): give one or the other"))
        if campaign.balance is None and row.count is None and campaign.count is None:
            located.append((row.line, f"{row.source}:{row.line}: item {row.key} has no count (give count, a "
                                      "campaign-wide count, or a balance target)"))
    keys: dict[str, Row] = {}
    for row in rows:
        if row.key in keys:
            located.append((row.line, f"{row.source}:{row.line}: item id {row.key!r} is also the id of "
                                      f"{keys[row.key].source}:{keys[row.key].line}"))
        keys.setdefault(row.key, row)
    if campaign.balance is not None and campaign.balance.match is not None:
        folder = (path.parent / campaign.balance.match).expanduser()
        if not (folder / "manifest.csv").is_file():
            line = lines.get(("balance", "match"), balance_line)
            located.append((line, f"{source}:{line}: balance.match: no manifest.csv in {folder}; point it at a "
                                  "dataset prepared with `clinisynth prepare`"))
    if located:
        raise CampaignError([message for _, message in sorted(located, key=lambda pair: pair[0])])
    if campaign.balance is None:
        rows = [row if row.count is not None else dataclasses.replace(row, count=campaign.count) for row in rows]
    return LoadedCampaign(campaign=campaign, rows=rows, path=path.absolute(), bad_rows=bad_rows)


def _check_thresholds(campaign: Campaign, lines: dict[tuple, int], source: str) -> list[tuple[int, str]]:
    """The verifier thresholds' fields and ranges, as the verifier itself checks them."""
    from dataclasses import fields, replace

    from clinisynth.agents.verifier import ModalityThresholds

    known = sorted({f.name for f in fields(ModalityThresholds)} - {"sanity"})
    found = []
    for modality, overrides in campaign.verifier_thresholds.items():
        for name, value in overrides.items():
            line = lines.get(("verifier_thresholds", modality, name), 1)
            if name not in known:
                found.append((line, f"{source}:{line}: unknown key 'verifier_thresholds.{modality}.{name}' "
                                    f"(known here: {', '.join(known)})"))
                continue
            try:
                replace(ModalityThresholds(), **{name: value})
            except ValueError as error:
                found.append((line, f"{source}:{line}: verifier_thresholds.{modality}: {error}"))
    return found


def _read_items_file(path: Path, *, first: int, line: int, source: str):
    """Rows of a CSV (header with ``description``, optional ``count`` and ``id``) or JSONL items file.

    Returns ``(rows, bad_rows, problems)``: a file that cannot be used at all is a problem of the campaign file;
    a row that cannot be used is a bad row (line and why).
    """
    where = f"{source}:{line}"
    if path.suffix.lower() not in ITEM_FILE_SUFFIXES:
        return [], [], [(line, f"{where}: items_file {path.name} must be .csv or .jsonl")]
    if not path.is_file():
        return [], [], [(line, f"{where}: items_file {path} does not exist")]
    name = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        return [], [], [(line, f"{where}: items_file {path} cannot be read ({error})")]
    records: list[tuple[int, Any]] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        header = reader.fieldnames or []
        unknown = [column for column in header if column not in ITEM_FILE_KEYS]
        if "description" not in header or unknown:
            why = (f"unknown column(s) {unknown}" if unknown else "no 'description' column")
            return [], [], [(line, f"{name}:1: {why} (columns: {', '.join(ITEM_FILE_KEYS)})")]
        for row in reader:
            records.append((reader.line_num, {k: v for k, v in row.items() if k is not None and v not in (None, "")}))
    else:
        for number, text_line in enumerate(text.splitlines(), start=1):
            if not text_line.strip():
                continue
            try:
                records.append((number, json.loads(text_line)))
            except ValueError as error:
                records.append((number, f"not valid JSON ({error})"))
    rows, bad = [], []
    for position, (number, record) in enumerate(records, start=first):
        if isinstance(record, str):
            bad.append(Rejected(name, number, "", record))
            continue
        if not isinstance(record, dict):
            bad.append(Rejected(name, number, "", "a row is an object with a description"))
            continue
        description = str(record.get("description", ""))
        unknown = sorted(set(record) - set(ITEM_FILE_KEYS))
        if unknown:
            bad.append(Rejected(name, number, description,
                                f"unknown key(s) {unknown} (known: {', '.join(ITEM_FILE_KEYS)})"))
            continue
        try:
            item = Item.model_validate({**record, **({"id": str(record["id"])} if "id" in record else {})})
        except ValidationError as error:
            why = "; ".join(f"{_where(tuple(e['loc']))}: {e['msg']}" for e in error.errors(include_url=False))
            bad.append(Rejected(name, number, description, why))
            continue
        if not item.description.strip():
            bad.append(Rejected(name, number, description, "empty description"))
            continue
        rows.append(Row(key=item.id or str(position), source=name, line=number, description=item.description,
                        count=item.count))
    return rows, bad, []


def item_seed(campaign_seed: int, key: str) -> int:
    """The base seed of an item: from the campaign seed and the item's id only (slot ``s`` starts at base + s),
    so a slot's seeds do not depend on the order items are run in or on how slots are chunked."""
    digest = hashlib.sha256(f"clinisynth-campaign:{campaign_seed}:{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:5], "big")  # < 2**40: room for the round and best-of strides below MAX_SEED


def differences(old: dict, new: dict, path: str = "") -> list[str]:
    """``key: old -> new`` for every value that differs between two canonical campaigns."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in old:
                found.append(f"{where}: added {json.dumps(new[key])[:120]}")
            elif key not in new:
                found.append(f"{where}: removed (was {json.dumps(old[key])[:120]})")
            else:
                found += differences(old[key], new[key], where)
        return found
    if isinstance(old, list) and isinstance(new, list):
        found = []
        for index in range(max(len(old), len(new))):
            where = f"{path}[{index}]"
            if index >= len(old):
                found.append(f"{where}: added {json.dumps(new[index])[:120]}")
            elif index >= len(new):
                found.append(f"{where}: removed (was {json.dumps(old[index])[:120]})")
            else:
                found += differences(old[index], new[index], where)
        return found
    return [] if old == new else [f"{path}: {json.dumps(old)[:120]} -> {json.dumps(new)[:120]}"]
