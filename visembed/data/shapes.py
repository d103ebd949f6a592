"""`builtin:shapes`: synthetic scenes of 1-3 coloured shapes with compositional captions.

Each scene is drawn on the fly from (seed, index), so any size costs no disk and is identical on
every machine. Objects stand in a row, which makes "left of" in the caption true by construction:
"a small red circle left of a large blue square". The label (for zero-shot evaluation) is the
colour and shape of the leftmost object, e.g. "red circle", which the caption names first.
Splits are index ranges of one sequence: train 80 %, val 10 %, test 10 % of `n`.
"""

from __future__ import annotations

import random
from typing import Iterator

from PIL import Image, ImageDraw

from .images import SkipCounter
from .sample import DataError, Sample

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.09, "large": 0.16}  # radius as a fraction of the image side: same meaning in every scene
SPLIT_RANGES = {"train": (0.0, 0.8), "val": (0.8, 0.9), "test": (0.9, 1.0), "all": (0.0, 1.0)}  # all: for indexing


class ShapesDataset:
    streaming = False

    def __init__(
        self,
        split: str = "train",
        *,
        n: int = 2000,
        seed: int = 0,
        size: int = 64,
        max_objects: int = 3,
        language: str = "en",
    ):
        if split == "validation":
            split = "val"
        if split not in SPLIT_RANGES:
            raise DataError(f"builtin:shapes has splits {', '.join(SPLIT_RANGES)}, not {split!r}")
        if language not in ("en", "both"):
            raise DataError("builtin:shapes has English captions only (language='en')")
        for name, value, low_, high_ in (("n", n, 1, 10**9), ("size", size, 16, 4096), ("seed", seed, 0, 2**63)):
            if isinstance(value, bool) or not isinstance(value, int) or not low_ <= value <= high_:
                raise DataError(f"builtin:shapes: {name} must be a whole number from {low_} to {high_}, not {value!r}")
        if max_objects not in (1, 2, 3) or isinstance(max_objects, bool):
            raise DataError("builtin:shapes: max_objects must be 1, 2 or 3")
        low, high = SPLIT_RANGES[split]
        self.start, self.stop = round(n * low), round(n * high)
        self.split, self.seed, self.size, self.max_objects = split, seed, size, max_objects
        self.labels = sorted(f"{color} {shape}" for color in COLORS for shape in SHAPES)
        self.skipped = SkipCounter()  # nothing is left out, but every source reports it

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(index)
        scene = self.start + index  # position in the whole sequence, shared by all splits
        rng = random.Random(f"shapes-{self.seed}-{scene}")  # str seeds hash deterministically
        objects = [
            (rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(list(SIZES)))
            for _ in range(rng.randint(1, self.max_objects))
        ]
        image = self._draw(objects, rng)
        phrases = [f"a {size} {color} {shape}" for color, shape, size in objects]
        if len(phrases) == 3:
            caption = f"{phrases[0]}, {phrases[1]} and {phrases[2]} from left to right"
        else:
            caption = " left of ".join(phrases)
        color, shape, _ = objects[0]
        return Sample(
            id=f"shapes-{self.seed}-{scene:06d}",
            image=image,
            caption=caption,
            captions={"en": caption},
            label=f"{color} {shape}",
            meta={"objects": objects},
        )

    def _draw(self, objects: list[tuple[str, str, str]], rng: random.Random) -> Image.Image:
        s = self.size
        background = tuple(rng.randint(225, 255) for _ in range(3))
        image = Image.new("RGB", (s, s), background)
        draw = ImageDraw.Draw(image)
        slot = s / len(objects)
        for i, (color, shape, size) in enumerate(objects):
            r = SIZES[size] * s
            cx = slot * (i + 0.5) + rng.uniform(-1, 1) * max(0.0, slot / 2 - r - 1)  # stays in its slot
            cy = s / 2 + rng.uniform(-0.25, 0.25) * (s / 2 - r)
            box = (cx - r, cy - r, cx + r, cy + r)
            fill = COLORS[color]
            if shape == "circle":
                draw.ellipse(box, fill=fill)
            elif shape == "square":
                draw.rectangle(box, fill=fill)
            else:
                draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
        return image
