"""Load the YAML reference records into a :class:`KnowledgeBase`."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
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
    return _hash_contents(data_dir, [(path, path.read_bytes()) for path in _file_paths(data_dir)])


def _hash_contents(data_dir: Path, contents: list[tuple[Path, bytes]]) -> str:
    digest = hashlib.sha256()
    for path, data in contents:
        digest.update(path.relative_to(data_dir).as_posix().encode())
        digest.update(b"\0")
        digest.update(data)
        digest.update(b"\0")
    return digest.hexdigest()


def load_files(data_dir: Path = DEFAULT_DATA_DIR) -> list[tuple[Path, KnowledgeFile]]:
    """Parse and schema-check every data file; errors name the file and the offending record."""
    return [(path, _check_file(path, _parse_yaml(path, path.read_bytes()))) for path in _file_paths(data_dir)]


def _parse_yaml(path: Path, data: bytes) -> object:
    try:
        # Newlines as ``Path.read_text`` gives them (universal newlines).
        return yaml.safe_load(data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n"))
    except yaml.YAMLError as error:
        raise KnowledgeError(f"{path}: not valid YAML: {error}") from error


def _check_file(path: Path, raw: object) -> KnowledgeFile:
    try:
        return KnowledgeFile.model_validate(raw)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            where = ".".join(str(part) for part in item["loc"])
            record_id = _record_id_at(raw, item["loc"])
            problems.append(f"{where}{f' ({record_id})' if record_id else ''}: {item['msg']}")
        raise KnowledgeError(f"{path}: " + "; ".join(problems)) from error


def _record_id_at(raw: object, loc: tuple) -> str | None:
    if isinstance(raw, dict) and len(loc) >= 2 and loc[0] == "records" and isinstance(loc[1], int):
        records = raw.get("records") or []
        if loc[1] < len(records) and isinstance(records[loc[1]], dict):
            return records[loc[1]].get("id")
    return None


def load_knowledge(
    data_dir: Path | str = DEFAULT_DATA_DIR, *, validate: bool = True, cache_dir: Path | str | None = None
) -> KnowledgeBase:
    """Load every record under ``data_dir``.

    Args:
        data_dir: folder of ``*.yaml`` knowledge files (searched recursively).
        validate: also check referential integrity (unique ids, every reference resolves).
        cache_dir: root cache folder; when given, the parsed YAML is kept in
            ``<cache_dir>/knowledge/<key>.json``, keyed by the files' content hash, and reused while the
            files are unchanged (parsing the YAML is nearly all of a load's time). Records are
            schema-checked and, with ``validate``, integrity-checked on every load, cached or not; a
            cache file that cannot be read or does not match is ignored and rewritten.

    Raises:
        KnowledgeError: with every problem found, each naming its file and record.
    """
    data_dir = Path(data_dir)
    contents = [(path, path.read_bytes()) for path in _file_paths(data_dir)]
    digest = _hash_contents(data_dir, contents)
    names = [path.relative_to(data_dir).as_posix() for path, _ in contents]
    cache_file = _cache_file(Path(cache_dir), digest) if cache_dir is not None else None
    cached = _read_cache(cache_file, digest, names) if cache_file is not None else None
    files = None
    if cached is not None:
        try:
            files = [(path, _check_file(path, raw)) for (path, _), raw in zip(contents, cached)]
        except KnowledgeError:
            # Files that passed the schema when cached fail now: the schema changed, or the cache was
            # tampered with. Either way the YAML itself decides (and names the problem).
            _discard(cache_file)
    if files is None:
        raws, files = [], []
        for path, data in contents:
            raws.append(_parse_yaml(path, data))
            files.append((path, _check_file(path, raws[-1])))
        if cache_file is not None:
            _write_cache(cache_file, digest, names, raws)
    records = [record for _, kfile in files for record in kfile.records]
    versions = sorted((kfile.version for _, kfile in files), key=lambda v: tuple(int(x) for x in v.split(".")))
    base = KnowledgeBase(records=records, content_hash=digest, version=versions[-1], source_dir=data_dir)
    if validate:
        from clinisynth.knowledge.validate import integrity_problems

        problems = integrity_problems(files)
        if problems:
            raise KnowledgeError(f"{len(problems)} problem(s) in {data_dir}:\n" + "\n".join(problems))
    return base


# ---------------------------------------------------------------------- parsed-YAML cache

#: Bump when the cache file's layout changes.
CACHE_FORMAT = 1
#: Cache files kept per cache folder (one per knowledge content seen); older ones are removed.
_CACHE_KEEP = 8


def _cache_file(cache_dir: Path, digest: str) -> Path:
    # The parser's version is in the key: another PyYAML could read the same bytes differently.
    key = hashlib.sha256(f"{CACHE_FORMAT}\0{digest}\0pyyaml {yaml.__version__}".encode()).hexdigest()[:20]
    return cache_dir / "knowledge" / f"{key}.json"


def _read_cache(path: Path, digest: str, names: list[str]) -> list | None:
    """The cached parse of these files, or ``None`` (and the file removed) when it is absent or unusable."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        _discard(path)
        return None
    if (
        not isinstance(payload, dict)
        or payload.get("format") != CACHE_FORMAT
        or payload.get("content_hash") != digest
        or payload.get("names") != names
        or not isinstance(payload.get("files"), list)
        or len(payload["files"]) != len(names)
    ):
        _discard(path)
        return None
    return payload["files"]


def _write_cache(path: Path, digest: str, names: list[str], raws: list) -> None:
    """Write the cache atomically; skip it when the parse does not survive JSON unchanged (dates, sets,
    non-string keys) or the folder is not writable: the cache is an optimisation, never a requirement."""
    payload = {"format": CACHE_FORMAT, "content_hash": digest, "names": names, "files": raws}
    try:
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        if json.loads(text)["files"] != raws:
            return
    except (TypeError, ValueError):
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
            os.replace(staging, path)
        except BaseException:
            _discard(Path(staging))
            raise
        _prune(path.parent, keep=path)
    except OSError:
        return


def _prune(folder: Path, *, keep: Path) -> None:
    try:
        others = sorted((p for p in folder.glob("*.json") if p != keep), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return
    for stale in others[_CACHE_KEEP - 1:]:
        _discard(stale)


def _discard(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
