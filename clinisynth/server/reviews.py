"""Reviewers' decisions, kept in the dataset: ``OUT/reviews.jsonl`` (every decision, in order) and the
``review`` / ``review_comment`` columns of ``metadata.jsonl`` (the latest one); approved images export as an
imagefolder zip."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import datetime, timezone
from pathlib import Path

from clinisynth.server.errors import ApiError

REVIEWS_NAME = "reviews.jsonl"


def record_review(storage, *, run_id: str, file_name: str, decision: str, comment: str, reviewer: str) -> dict:
    """Append the decision to ``reviews.jsonl`` and set it on the image's metadata row.

    Raises:
        ApiError: 404 when ``file_name`` is not an image of run ``run_id``.
    """
    rows = [row for row in storage.read_metadata() if row.get("file_name") == file_name]
    if not rows or rows[-1].get("run_id") != run_id:
        raise ApiError(404, f"no stored image {file_name!r} in run {run_id}; GET /api/runs/{run_id}/images lists them",
                       field="file_name")
    review = {"run_id": run_id, "file_name": file_name, "decision": decision, "comment": comment,
              "reviewer": reviewer, "at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
    storage.append_record(REVIEWS_NAME, review)  # the log first: the metadata column follows it
    storage.update_metadata(file_name, {"review": decision, "review_comment": comment})
    return review


def read_reviews(storage) -> list[dict]:
    """Every decision of ``reviews.jsonl``, oldest first."""
    return storage.read_records(REVIEWS_NAME)


def approved_zip(storage, *, run_id: str | None = None) -> tuple[bytes, int]:
    """An imagefolder (``<modality>/<label>/*.png`` + ``metadata.jsonl``) of the approved images, as zip bytes.

    Args:
        run_id: only this run's images; every run's when ``None``.

    Returns:
        the zip and how many images it holds.

    Raises:
        ApiError: 404 when no image is approved.
    """
    rows = [row for row in storage.read_metadata() if row.get("review") == "approved"
            and (run_id is None or row.get("run_id") == run_id)]
    if not rows:
        where = f" in run {run_id}" if run_id else ""
        raise ApiError(404, f"no approved image{where}; approve images on the Review page first")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for row in rows:
            archive.write(Path(storage.root) / row["file_name"], row["file_name"])
        archive.writestr("metadata.jsonl", "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return buffer.getvalue(), len(rows)
