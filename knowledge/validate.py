"""Referential integrity of the knowledge records: unique ids and every reference resolving."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from clinisynth.knowledge.schema import KnowledgeFile, Record


def _where(path: Path, record: Record) -> str:
    return f"{path.name}: {record.id}"


def integrity_problems(files: list[tuple[Path, KnowledgeFile]]) -> list[str]:
    """Return one message per problem (empty when the records hang together).

    Checks: ids unique across files; ``modalities``/``visual`` keys point at modality records;
    ``locations`` at anatomy; ``signs`` at signs; ``parent`` at a record of the same kind;
    labels unique per modality among findings; one normal finding at most per modality;
    no term, synonym or abbreviation claimed by two records of the same kind and modality;
    no (family, region) covered by two modalities and one ``default_for_family`` at most per family.
    """
    problems: list[str] = []
    all_records = [(path, record) for path, kfile in files for record in kfile.records]
    counts = Counter(record.id for _, record in all_records)
    for record_id, count in sorted(counts.items()):
        if count > 1:
            places = sorted({path.name for path, record in all_records if record.id == record_id})
            problems.append(f"id {record_id!r} is defined {count} times ({', '.join(places)})")
    by_id = {record.id: record for _, record in all_records}

    def expect(path: Path, record: Record, field: str, target: str, kind: str) -> None:
        found = by_id.get(target)
        if found is None:
            problems.append(f"{_where(path, record)}: {field} refers to unknown id {target!r}")
        elif found.kind != kind:
            problems.append(f"{_where(path, record)}: {field} {target!r} is a {found.kind}, expected a {kind}")

    for path, record in all_records:
        for target in record.modalities:
            expect(path, record, "modalities", target, "modality")
        for target in record.visual:
            expect(path, record, "visual", target, "modality")
            if record.modalities and target not in record.modalities:
                problems.append(f"{_where(path, record)}: visual describes {target!r}, which is not in its modalities")
        for target in record.locations:
            expect(path, record, "locations", target, "anatomy")
        for target in record.signs:
            expect(path, record, "signs", target, "sign")
        for target in record.enlargement_of:
            expect(path, record, "enlargement_of", target, "anatomy")
        if record.parent is not None:
            expect(path, record, "parent", record.parent, record.kind)
        if record.kind == "finding":
            missing = [m for m in record.modalities if m not in record.visual]
            if missing:
                problems.append(f"{_where(path, record)}: no visual description for {', '.join(missing)}")

    labels: dict[tuple[str, str], str] = {}
    normals: dict[str, str] = {}
    for path, record in all_records:
        if record.kind != "finding":
            continue
        for modality in record.modalities:
            key = (modality, record.label or "")
            if key in labels and labels[key] != record.id:
                problems.append(
                    f"{_where(path, record)}: label {record.label!r} in {modality} already used by {labels[key]!r}"
                )
            labels.setdefault(key, record.id)
            if record.normal:
                if modality in normals:
                    problems.append(f"{_where(path, record)}: {modality} already has normal finding {normals[modality]!r}")
                normals.setdefault(modality, record.id)

    covered: dict[tuple[str, str], str] = {}
    defaults: dict[str, str] = {}
    for path, record in all_records:
        if record.kind != "modality" or record.family is None:
            continue
        for region in record.regions:
            owner = covered.setdefault((record.family, region), record.id)
            if owner != record.id:
                problems.append(f"{_where(path, record)}: {record.family} of the {region} is already covered by {owner!r}")
        if record.default_for_family:
            owner = defaults.setdefault(record.family, record.id)
            if owner != record.id:
                problems.append(f"{_where(path, record)}: {owner!r} is already the default for the family {record.family!r}")

    claimed: dict[tuple[str, str, str], str] = {}
    for path, record in all_records:
        scopes = record.modalities or [record.id]
        for phrase in [record.term, *record.synonyms, *record.abbreviations]:
            for scope in scopes:
                key = (record.kind, scope, phrase.strip().lower())
                owner = claimed.setdefault(key, record.id)
                if owner != record.id:
                    problems.append(
                        f"{_where(path, record)}: phrase {phrase!r} is also claimed by {owner!r} in {scope}"
                    )
    return problems
