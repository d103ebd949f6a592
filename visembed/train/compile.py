"""`train.compile`: the towers' forward (and so their backward) through `torch.compile`.

What is compiled: the image tower, and the BPE text tower (`model.text.kind == "transformer"`) at
bucketed lengths; the projections, the loss and the optimiser stay eager. A pretrained transformers
text tower (kind "hf") keeps its eager forward: it sits behind a per-text feature cache and a CJK
router that a graph cannot hold.

Why buckets: the loader cuts each batch's tokens after its longest caption (`batch_tokens`), so the
sequence length changes from step to step and a graph specialised to one length would be traced
again each time a new one came. Here the tokens are padded, outside the graph, up to the next power
of two from 8 (capped at the context length): at most five lengths for a 77-token tower, each
compiled once. Padding changes nothing a tower computes for the real tokens: the BPE tower attends
causally (or masks padded keys) and pools at `<eos>`, found from the mask, or at the last position
of a sequence already padded to the context length. (The numbers are not bit-identical to eager:
other kernels, other summation orders; `tests/test_train_compile.py` bounds the difference.)

The towers are compiled in place (`forward` replaced on the module), so parameter names, state
dicts and checkpoints are the eager model's: a compiled run resumes an eager one and vice versa.

`auto` (the default) compiles only on device types where compiled towers measured faster for a
whole run, compile time included (`benchmarks/train_speed.py`); see docs/speed.md for the figures.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

COMPILE_CHOICES = ("off", "on", "auto")
# device types where `auto` compiles: measured faster end to end (benchmarks/train_speed.py). CPU: not
# (2 shared cores, clip-tiny: compiled step 6.3 vs eager 9.4 samples/s, after 14-150 s of compiling);
# CUDA: not measured yet (no GPU lent while this was built; benchmarks/device_check.sh measures it)
MEASURED_FASTER: frozenset[str] = frozenset()
SMALLEST_BUCKET = 8


def wants_compile(setting: str, device: torch.device) -> bool:
    """Whether `train.compile` = `setting` compiles the towers on `device`."""
    if setting not in COMPILE_CHOICES:
        raise ValueError(f"train.compile must be one of {', '.join(COMPILE_CHOICES)}, not {setting!r}")
    return setting == "on" or (setting == "auto" and torch.device(device).type in MEASURED_FASTER)


def bucket_length(length: int, limit: int) -> int:
    """The padded length for a batch whose longest text has `length` tokens: the next power of two
    from SMALLEST_BUCKET, at most `limit` (the context length)."""
    bucket = SMALLEST_BUCKET
    while bucket < length:
        bucket *= 2
    return min(max(bucket, length), limit)


def _pad_to_bucket(tower: nn.Module, args: tuple, kwargs: dict):
    """Forward pre-hook of the BPE text tower: (ids (B, T), mask (B, T)) -> both padded to the bucket
    of T (ids with the pad id, mask with zeros: not real tokens)."""
    ids, mask = args
    extra = bucket_length(ids.shape[1], tower.context_length) - ids.shape[1]
    if extra > 0:
        ids = F.pad(ids, (0, extra), value=tower.tokenizer.pad_id)
        mask = F.pad(mask, (0, extra), value=0)
    # contiguous either way: a batch cut to the context length is a strided view, and a graph is
    # specialised to its inputs' strides too
    return (ids.contiguous(), mask.contiguous()), kwargs


def _compile_in_training(tower: nn.Module, options: dict) -> None:
    """`tower.forward` compiled while the tower trains, eager in eval mode (periodic and final
    evaluation see other batch sizes: not worth a graph each)."""
    eager = tower.forward
    compiled = torch.compile(eager, **options)

    def forward(*args, **kwargs):
        return compiled(*args, **kwargs) if tower.training else eager(*args, **kwargs)

    tower.forward = forward


def compile_towers(model: nn.Module, **options) -> list[str]:
    """Compile a dual encoder's towers in place (see the module docstring); -> the names of what was
    compiled. `options` go to `torch.compile` (e.g. mode="max-autotune")."""
    from visembed.models.dual_encoder import DualEncoder

    if not isinstance(model, DualEncoder):
        raise ValueError(f"train.compile=on compiles a dual encoder's towers; this task trains a "
                         f"{type(model).__name__} (set train.compile=off)")
    options.setdefault("dynamic", False)  # one graph per shape: the image batch is fixed, text lengths bucketed
    _compile_in_training(model.vision, options)
    compiled = ["vision"]
    if model.cfg.text.kind == "transformer":
        model.text.register_forward_pre_hook(_pad_to_bucket, with_kwargs=True)
        _compile_in_training(model.text, options)
        compiled.append("text")
    return compiled
