"""Find text burned into the pixels (patient ids, dates, hospital and vendor names).

Two stages. A morphological text-line detector proposes lines: a white and a black top-hat keep strokes
thinner than a letter is wide; strokes above a contrast threshold (raised on grainy frames) become
connected components; those of a letter's size and shape are chained into lines (similar height, aligned
tops or bottoms, gaps under a letter's height). Tesseract OCR then reads each proposed line from its
strokes (black on white, scaled to 32 px) and confirms it when it reads a word of
:attr:`TextDetectorSettings.ocr_min_alnum` letters or digits with confidence. The first stage alone
quarantined a third of the shared brain MRI slices (gyri chain like letters); Tesseract alone, on whole
frames, missed every identifier drawn over a radiograph (light text on a varying background defeats its
binarisation) at about 1 s per image. Figures: BENCHMARKS.md (``benchmarks/bench_burned_in_text.py``).

Misses, by construction: single letters and lines shorter than :attr:`TextDetectorSettings.min_chars`
(lateral markers ``L`` / ``R``), letters that touch bright anatomy (they merge with it into one large
component), text fainter than the contrast threshold, and text Tesseract cannot read (handwriting, heavy
blur, rotated text).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clinisynth.evaluation.images import grey


@dataclass(frozen=True)
class TextDetectorSettings:
    """Thresholds of :func:`find_text_lines` (the defaults are the measured ones).

    Args:
        contrast: top-hat response, in grey levels, that a stroke must exceed.
        stroke: side of the top-hat's square, in pixels: strokes thinner than this are kept.
        min_height: smallest letter height in pixels (at the working scale).
        max_height: largest letter height in pixels (at the working scale).
        min_chars: letters in one line that make it text.
        max_side: frames with a longer side are downscaled to it first (bounds the cost).
        noise_factor: the contrast threshold is at least this many times the frame's pixel-noise sigma
            (robust: from the median absolute difference to a 3x3 median), so grain does not form letters.
        ocr_confidence: Tesseract word confidence (0-100) that confirms a candidate line.
        ocr_min_alnum: letters or digits a confirming word must have.
        max_lines: candidate lines read per frame, longest first (bounds the OCR page).
    """

    contrast: float = 40.0
    stroke: int = 7
    min_height: int = 5
    max_height: int = 48
    min_chars: int = 4
    max_side: int = 1024
    noise_factor: float = 4.0
    ocr_confidence: float = 60.0
    ocr_min_alnum: int = 3
    max_lines: int = 24


@dataclass(frozen=True)
class TextLine:
    """One line of letters: its box ``(top, left, bottom, right)`` in the frame's pixels and its letter count."""

    box: tuple[int, int, int, int]
    chars: int


def _working_grey(frame: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    values = grey(frame)
    height, width = values.shape
    scale = 1.0
    if max(height, width) > max_side:
        from PIL import Image

        scale = max_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        values = np.asarray(Image.fromarray(values).resize(size, Image.Resampling.BOX))
    return values.astype(np.float32), scale


def _letter_boxes(strokes: np.ndarray, settings: TextDetectorSettings) -> list[tuple[int, int, int, int]]:
    from scipy import ndimage

    labels, count = ndimage.label(strokes, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return []
    sizes = ndimage.sum_labels(strokes, labels, index=np.arange(1, count + 1))
    boxes = []
    for index, found in enumerate(ndimage.find_objects(labels)):
        top, bottom = found[0].start, found[0].stop
        left, right = found[1].start, found[1].stop
        height, width = bottom - top, right - left
        if not settings.min_height <= height <= settings.max_height or width > 2 * height:
            continue
        fill = sizes[index] / float(height * width)
        # Letters are neither a sparse speck nor a solid block, except the bars of I, l, 1.
        if 0.12 <= fill <= 0.9 or (fill > 0.9 and width * 3 <= height):
            boxes.append((top, left, bottom, right))
    return boxes


def _chain(boxes: list[tuple[int, int, int, int]]) -> list[list[int]]:
    """Group letter boxes into lines: union of neighbours of similar height at one baseline or cap line."""
    parent = list(range(len(boxes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    order = sorted(range(len(boxes)), key=lambda i: boxes[i][1])
    for position, i in enumerate(order):
        top_i, left_i, bottom_i, right_i = boxes[i]
        height_i = bottom_i - top_i
        for j in order[position + 1:]:
            top_j, left_j, bottom_j, right_j = boxes[j]
            height = max(height_i, bottom_j - top_j)
            if left_j - right_i > height:
                break  # sorted by left edge: every later box is farther still
            if min(height_i, bottom_j - top_j) * 2 < height:
                continue
            aligned = abs(top_i - top_j) <= 0.25 * height or abs(bottom_i - bottom_j) <= 0.25 * height
            if aligned and left_j >= left_i:
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(boxes)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def _confirmed(masks: list[np.ndarray], settings: TextDetectorSettings) -> list[int]:
    """Indices of the candidate lines in which Tesseract reads a word with confidence.

    Args:
        masks: one array per candidate line, its strokes (True = ink).

    All lines go on one page, one row each (black letters on white, one letter height, a margin), so a
    frame costs one Tesseract run. Tesseract's confidence swings with the letter height, so a page
    with no confirmed line is read again at a second height.
    """
    import os

    import pytesseract
    from PIL import Image

    # Tesseract's OpenMP threads would compete with prepare's own worker processes.
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    for height, margin in ((48, 8), (24, 8)):
        row = height + 2 * margin
        rows = []
        for mask in masks:
            zoom = height / max(1, mask.shape[0])
            line = Image.fromarray(np.where(mask, 0, 255).astype(np.uint8))
            rows.append(line.resize((max(1, round(line.width * zoom)), height), Image.Resampling.BILINEAR))
        page = Image.new("L", (max(line.width for line in rows) + 2 * margin, row * len(rows)), 255)
        for index, line in enumerate(rows):
            page.paste(line, (margin, index * row + margin))
        data = pytesseract.image_to_data(page, config="--psm 6 --oem 1", output_type=pytesseract.Output.DICT)
        found = {
            min(len(rows) - 1, (top + word_height // 2) // row)
            for word, confidence, top, word_height in zip(data["text"], data["conf"], data["top"], data["height"])
            if float(confidence) >= settings.ocr_confidence and sum(c.isalnum() for c in word) >= settings.ocr_min_alnum
        }
        if found:
            return sorted(found)
    return []


def find_text_lines(frame: np.ndarray, *, settings: TextDetectorSettings | None = None, ocr: bool = True) -> list[TextLine]:
    """Lines of burned-in text in an 8-bit frame, longest first (empty when there is none).

    Args:
        frame: uint8 ``(H, W)`` grey or ``(H, W, 3)`` RGB, at its native resolution.
        settings: thresholds (default :class:`TextDetectorSettings`).
        ocr: confirm each candidate line with Tesseract (a word read with confidence); without it
            every candidate line counts.
    """
    from scipy import ndimage

    settings = settings or TextDetectorSettings()
    values, scale = _working_grey(frame, settings.max_side)
    noise = 1.4826 * float(np.median(np.abs(values - ndimage.median_filter(values, size=3))))
    threshold = max(settings.contrast, settings.noise_factor * noise)
    footprint = (settings.stroke, settings.stroke)
    candidates: list[tuple[tuple[int, int, int, int], int, np.ndarray]] = []
    # Bright text on dark (the usual overlay) and dark text on bright, each on its own.
    for response in (ndimage.white_tophat(values, size=footprint), ndimage.black_tophat(values, size=footprint)):
        strokes = response > threshold
        boxes = _letter_boxes(strokes, settings)
        for group in _chain(boxes):
            if len(group) < settings.min_chars:
                continue
            tops, lefts, bottoms, rights = zip(*(boxes[i] for i in group))
            top, left, bottom, right = min(tops), min(lefts), max(bottoms), max(rights)
            # The band of the line, a letter's height wider on each side: the words' first and last letters.
            pad = bottom - top
            candidates.append(((top, left, bottom, right), len(group), strokes[top:bottom, max(0, left - pad):right + pad]))
    candidates = sorted(candidates, key=lambda c: -c[1])[: settings.max_lines]
    if ocr and candidates:
        candidates = [candidates[i] for i in _confirmed([mask for _, _, mask in candidates], settings)]
    lines = [TextLine(box=tuple(int(round(v / scale)) for v in box), chars=chars) for box, chars, _ in candidates]
    return sorted(lines, key=lambda line: -line.chars)
