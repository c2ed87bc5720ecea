"""Burned-in text check of ``clinisynth prepare``: recall, false quarantine and cost, in one run.

    python benchmarks/bench_burned_in_text.py --data ../shared/data --clean 1000 --overlays 15 --prepare 150
    python benchmarks/bench_burned_in_text.py --data ../shared/data --clean 1000 --stages 40

- Recall on pydicom's test files that carry text in their pixels (the palette, RGB, JPEG 2000 and
  30-frame YBR ultrasound examples), per file (any frame found) and per frame.
- Recall on synthetic overlays: a patient id, a date, a hospital and a vendor drawn with Pillow on real
  shared images (chest_xray, brain_mri), 4 sizes x 3 contrasts (white, black, +-80 grey levels from the
  local background) at random positions where the text fits.
- False quarantine on the clean shared images (an evenly spaced sample of each set); the flagged file
  names are printed so that a person can look whether they really carry text.
- Cost: the detector's ms per image, and ``prepare_dataset`` on the same files with and without the
  check (``text_check=False`` is the baseline), one worker each, in this process.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from clinisynth.training.prepare.burned_in import find_text_lines
from clinisynth.training.prepare.decode import decode_dicom

TEXT_FILES = ("examples_palette.dcm", "examples_rgb_color.dcm", "examples_jpeg2k.dcm", "examples_ybr_color.dcm")
TEXTS = {"patient id": "ID 4471298", "date": "2023-04-17", "hospital": "ST MARY HOSPITAL", "vendor": "SIEMENS"}
SIZES = (8, 10, 14, 20)
CONTRASTS = ("white", "black", "80 levels")


def _sample(folder: Path, count: int) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpeg", ".jpg"))
    step = max(1, len(files) // count)
    return files[::step][:count]


def pydicom_recall() -> None:
    from pydicom.data import get_testdata_file

    print("pydicom files with text in the pixels:")
    for name in TEXT_FILES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = Path(get_testdata_file(name)).read_bytes()
        frames = decode_dicom(data, pages="all").frames
        found = sum(bool(find_text_lines(frame)) for frame in frames)
        print(f"  {name}: {found} of {len(frames)} frame(s) found")


def overlay_recall(paths: list[Path], name: str, rng: random.Random) -> None:
    hits, total = Counter(), Counter()
    for path in paths:
        base = Image.open(path).convert("L")
        for kind, text in TEXTS.items():
            for size in SIZES:
                font = ImageFont.load_default(size=size)
                width = int(ImageDraw.Draw(base).textlength(text, font=font)) + 1
                if width >= base.width - 2:
                    continue  # does not fit: it would not be the whole text
                for contrast in CONTRASTS:
                    x, y = rng.randint(0, base.width - width - 1), rng.randint(0, base.height - size - 3)
                    local = float(np.median(np.asarray(base)[y:y + size, x:x + width]))
                    fill = {"white": 255, "black": 0}.get(contrast, int(local + 80 if local < 128 else local - 80))
                    image = base.copy()
                    ImageDraw.Draw(image).text((x, y), text, fill=fill, font=font)
                    found = bool(find_text_lines(np.asarray(image)))
                    for key in (("all",), ("size", size), ("contrast", contrast), ("text", kind)):
                        hits[key] += found
                        total[key] += 1
    print(f"synthetic overlays on {name} ({len(paths)} images): found {hits[('all',)]} of {total[('all',)]} "
          f"({100 * hits[('all',)] / max(1, total[('all',)]):.1f} %)")
    for group in ("size", "contrast", "text"):
        cells = [f"{key[1]}: {100 * hits[key] / total[key]:.0f} %" for key in sorted((k for k in total if k[0] == group), key=str)]
        print(f"  by {group}: " + ", ".join(cells))


def false_quarantine(paths: list[Path], name: str) -> None:
    flagged = []
    start = time.perf_counter()
    for path in paths:
        if find_text_lines(np.asarray(Image.open(path).convert("RGB"))):
            flagged.append(path.name)
    seconds = time.perf_counter() - start
    print(f"clean {name}: {len(flagged)} of {len(paths)} flagged ({100 * len(flagged) / len(paths):.2f} %), "
          f"{1000 * seconds / len(paths):.1f} ms per image; flagged: {', '.join(flagged) or 'none'}")


def prepare_cost(paths: list[Path], data: Path) -> None:
    from clinisynth.training.prepare import PrepareConfig, prepare_dataset

    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / "source"
        for path in paths:
            link = source / path.parent.name.lower() / path.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path.resolve())
        seconds = {}
        for check in (False, True):
            out = Path(work) / f"out-{check}"
            start = time.perf_counter()
            summary = prepare_dataset(
                PrepareConfig(source=source, out=out, size=256, modality="chest_xray", workers=1, text_check=check), progress=False
            )
            seconds[check] = time.perf_counter() - start
            print(f"prepare {len(paths)} chest images, text check {'on' if check else 'off'}: {seconds[check]:.1f} s "
                  f"({1000 * seconds[check] / len(paths):.1f} ms per image), quarantined {summary.quarantined}")
        print(f"  the check adds {1000 * (seconds[True] - seconds[False]) / len(paths):.1f} ms per image "
              f"({100 * (seconds[True] / seconds[False] - 1):.0f} %)")


def stage_comparison(paths: dict[str, list[Path]], rng: random.Random, tesseract_sample: int) -> None:
    """Why two stages: the line detector alone (``ocr=False``), and Tesseract alone on whole frames."""
    import pytesseract

    for name, files in paths.items():
        flagged = sum(bool(find_text_lines(np.asarray(Image.open(p).convert("RGB")), ocr=False)) for p in files)
        print(f"line detector alone, clean {name}: {flagged} of {len(files)} flagged ({100 * flagged / len(files):.1f} %)")
    files = paths["chest_xray"][:tesseract_sample]
    found = flagged = 0
    start = time.perf_counter()
    for path in files:
        base = Image.open(path).convert("L")
        image = base.copy()
        ImageDraw.Draw(image).text((rng.randint(0, 60), rng.randint(0, 200)), TEXTS["patient id"], fill=255, font=ImageFont.load_default(size=14))
        for picture, counter in ((base, "flagged"), (image, "found")):
            data = pytesseract.image_to_data(picture.resize((picture.width * 2, picture.height * 2)), config="--psm 11 --oem 1",
                                             output_type=pytesseract.Output.DICT)
            hit = any(float(c) >= 60 and sum(ch.isalnum() for ch in w) >= 3 for w, c in zip(data["text"], data["conf"]))
            if counter == "found":
                found += hit
            else:
                flagged += hit
    seconds = (time.perf_counter() - start) / (2 * len(files))
    print(f"Tesseract alone on whole chest frames (x2, --psm 11): id at 14 px found in {found} of {len(files)}, "
          f"clean flagged {flagged} of {len(files)}, {1000 * seconds:.0f} ms per image")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--clean", type=int, default=1000, help="clean images per shared set")
    parser.add_argument("--overlays", type=int, default=100, help="images per shared set to draw overlays on")
    parser.add_argument("--prepare", type=int, default=200, help="chest images for the prepare cost")
    parser.add_argument("--stages", type=int, default=0, metavar="N",
                        help="only compare the stages: the line detector alone on the clean sample, Tesseract alone on N chest images")
    args = parser.parse_args()
    rng = random.Random(0)
    sets = {"chest_xray": args.data / "chest_xray" / "train", "brain_mri": args.data / "brain_mri" / "train"}
    if args.stages:
        stage_comparison({name: _sample(folder, args.clean) for name, folder in sets.items()}, rng, args.stages)
        return
    pydicom_recall()
    for name, folder in sets.items():
        paths = _sample(folder, args.clean)
        false_quarantine(paths, name)
        overlay_recall(paths[1::max(1, len(paths) // args.overlays)][: args.overlays], name, rng)
    prepare_cost(_sample(sets["chest_xray"], args.prepare), args.data)


if __name__ == "__main__":
    main()
