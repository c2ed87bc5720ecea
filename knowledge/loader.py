"""Load the YAML reference records into a :class:`KnowledgeBase`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from clinisynth.knowledge.schema import KnowledgeFile, Record

DEFAULT_DATA_DIR = Path(__file__).resolve().parent / "data"


class KnowledgeError(ValueError):
    """A data file is malformed or the records do not hang together."""


@dataclass
class KnowledgeBase:
    """All records, indexed by id, with the hash of the files they came from.

    Args:
        records: every record, in file order.
        content_hash: sha256 over the data files' names and bytes; keys the retrieval cache.
        version: the highest ``version`` among the files.
        source_dir: where the files were read from.
    """

    records: list[Record]
    content_hash: str
    version: str
    source_dir: Path
    by_id: dict[str, Record] = field(init=False)

    def __post_init__(self) -> None:
        self.by_id = {record.id: record for record in self.records}

    def get(self, record_id: str) -> Record:
        try:
            return self.by_id[record_id]
        except KeyError:
            raise KeyError(f"no knowledge record with id {record_id!r}") from None

    def of_kind(self, kind: str) -> list[Record]:
        return [record for record in self.records if record.kind == kind]

    @property
    def modalities(self) -> list[Record]:
        return self.of_kind("modality")

    def findings_for(self, modality_id: str) -> list[Record]:
        return [r for r in self.records if r.kind == "finding" and modality_id in r.modalities]

    def normal_finding_for(self, modality_id: str) -> Record | None:
        for record in self.findings_for(modality_id):
            if record.normal:
                return record
        return None


def _file_paths(data_dir: Path) -> list[Path]:
    if not data_dir.is_dir():
        raise KnowledgeError(f"knowledge data dir {data_dir} does not exist; point it at a folder of *.yaml files")
    paths = sorted(p for p in data_dir.rglob("*.yaml") if p.is_file())
    if not paths:
        raise KnowledgeError(f"knowledge data dir {data_dir} holds no *.yaml files")
    return paths


def content_hash(data_dir: Path = DEFAULT_DATA_DIR) -> str:
    """Hash of the data files (names and bytes), cheap enough to check on every start."""
    digest = hashlib.sha256()
    for path in _file_paths(data_dir):
        digest.update(path.relative_to(data_dir).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def load_files(data_dir: Path = DEFAULT_DATA_DIR) -> list[tuple[Path, KnowledgeFile]]:
    """Parse and schema-check every data file; errors name the file and the offending record."""
    loaded = []
    for path in _file_paths(data_dir):
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise KnowledgeError(f"{path}: not valid YAML: {error}") from error
        try:
            loaded.append((path, KnowledgeFile.model_validate(raw)))
        except ValidationError as error:
            problems = []
            for item in error.errors():
                where = ".".join(str(part) for part in item["loc"])
                record_id = _record_id_at(raw, item["loc"])
                problems.append(f"{where}{f' ({record_id})' if record_id else ''}: {item['msg']}")
            raise KnowledgeError(f"{path}: " + "; ".join(problems)) from error
    return loaded


def _record_id_at(raw: object, loc: tuple) -> str | None:
    if isinstance(raw, dict) and len(loc) >= 2 and loc[0] == "records" and isinstance(loc[1], int):
        records = raw.get("records") or []
        if loc[1] < len(records) and isinstance(records[loc[1]], dict):
            return records[loc[1]].get("id")
    return None


def load_knowledge(data_dir: Path | str = DEFAULT_DATA_DIR, *, validate: bool = True) -> KnowledgeBase:
    """Load every record under ``data_dir``.

    Args:
        data_dir: folder of ``*.yaml`` knowledge files (searched recursively).
        validate: also check referential integrity (unique ids, every reference resolves).

    Raises:
        KnowledgeError: with every problem found, each naming its file and record.
    """
    data_dir = Path(data_dir)
    files = load_files(data_dir)
    records = [record for _, kfile in files for record in kfile.records]
    versions = sorted((kfile.version for _, kfile in files), key=lambda v: tuple(int(x) for x in v.split(".")))
    base = KnowledgeBase(records=records, content_hash=content_hash(data_dir), version=versions[-1], source_dir=data_dir)
    if validate:
        from clinisynth.knowledge.validate import integrity_problems

        problems = integrity_problems(files)
        if problems:
            raise KnowledgeError(f"{len(problems)} problem(s) in {data_dir}:\n" + "\n".join(problems))
    return base
