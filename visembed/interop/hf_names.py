"""The one table of weight names between transformers' CLIP / SigLIP and visembed's towers, read both ways.

Our towers are transformers' CLIP under other module names, so import (`hf_import.py`) and export
(`hf_export.py`, `llava.py`) rename weights with these prefixes and never change a value.
"""

from __future__ import annotations

# (transformers CLIPModel prefix, visembed DualEncoder prefix); the first match wins
HF_PREFIXES = (
    ("text_model.embeddings.", "text."),
    ("text_model.", "text."),
    ("vision_model.embeddings.", "vision."),
    ("vision_model.", "vision."),
    ("visual_projection.", "visual_projection."),
    ("text_projection.", "text_projection."),
    ("logit_scale", "logit_scale"),
)
# the same for a transformers SiglipModel
SIGLIP_PREFIXES = (
    ("text_model.embeddings.", "text."),
    ("text_model.head.", "text_projection."),
    ("text_model.", "text."),
    ("vision_model.embeddings.", "vision."),
    ("vision_model.", "vision."),
    ("logit_scale", "logit_scale"),
    ("logit_bias", "logit_bias"),
)
# buffers that transformers 4.x wrote into checkpoints and later stopped saving: no weights
IGNORED_HF_KEYS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


def from_hf_name(name: str, prefixes=HF_PREFIXES) -> str | None:
    """A transformers CLIPModel (or, with SIGLIP_PREFIXES, SiglipModel) weight name -> ours (None: no place for it)."""
    for theirs, ours in prefixes:
        if name.startswith(theirs):
            return ours + name[len(theirs):]
    return None


def to_hf_name(name: str, prefixes=HF_PREFIXES) -> str | None:
    """Our weight name -> transformers CLIPModel's (or SiglipModel's) (None: no place for it)."""
    embeddings = ("token_embedding.", "position_embedding.", "class_embedding", "patch_embedding.")
    for theirs, ours in prefixes:
        if name.startswith(ours):
            rest = name[len(ours):]
            if theirs.endswith("embeddings.") != rest.startswith(embeddings):
                continue
            return theirs + rest
    return None
