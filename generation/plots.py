"""Pictures: contact sheets of images (a run's candidates, training samples) and a training loss curve.

PNG files written atomically (:func:`clinisynth.generation.files.write_atomically`). Here, in ``generation/``,
so that both ``agents/`` (a run's ``attempts.png``) and ``training/`` may import them (DESIGN.md).
"""

from __future__ import annotations

import io
from pathlib import Path

from clinisynth.generation.files import write_atomically


def plot_loss_curve(path: Path, *, train: list[tuple[int, float]], validation: list[tuple[int, float]],
                    title: str = "loss", train_label: str = "train") -> Path:
    """Write a PNG with the training loss (light) and the held-out validation loss (markers) against steps.

    ``train_label`` says what the training loss is (e.g. min-SNR weighted, which is not comparable in scale to the
    unweighted validation MSE).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    figure, axis = plt.subplots(figsize=(6, 4), dpi=100)
    if train:
        steps, values = zip(*train)
        axis.plot(steps, values, color="tab:blue", alpha=0.35, linewidth=0.8, label=f"{train_label} (per step)")
        if len(values) >= 20:  # a running mean makes the trend readable
            window = max(5, len(values) // 20)
            smooth = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                      for i in range(len(values))]
            axis.plot(steps, smooth, color="tab:blue", linewidth=1.5, label=f"{train_label} (mean of {window})")
    if validation:
        steps, values = zip(*validation)
        axis.plot(steps, values, color="tab:red", marker="o", linewidth=1.5, label="validation MSE (held out, unweighted)")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("noise-prediction MSE")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    write_atomically(path, buffer.getvalue())
    return path


def contact_sheet(path: Path, images: list, *, columns: int = 4, labels: list[str] | None = None) -> Path:
    """Tile PIL images (same size) into one PNG, ``columns`` per row, with an optional short label on each."""
    from PIL import Image, ImageDraw

    if not images:
        raise ValueError("contact_sheet needs at least one image")
    path = Path(path)
    width, height = images[0].size
    rows = (len(images) + columns - 1) // columns
    label_h = 12 if labels else 0
    sheet = Image.new("RGB", (columns * width, rows * (height + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for index, image in enumerate(images):
        x, y = (index % columns) * width, (index // columns) * (height + label_h)
        sheet.paste(image.convert("RGB").resize((width, height)), (x, y + label_h))
        if labels:
            draw.text((x + 1, y), str(labels[index])[: max(1, width // 6)], fill="black")
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    write_atomically(path, buffer.getvalue())
    return path
