"""LoRA adapters on a captioner's language model (Hu et al. 2021), through `peft` (optional).

    add_adapters(lm, rank, alpha)   every Linear / Conv1D layer of the LM except its output layer
                                    (peft's "all-linear") gets W x + (alpha / rank) B A x, with A
                                    (rank, in) random, B (out, rank) zero: the LM starts unchanged;
                                    its own weights are frozen, A and B learn
    merge_adapters(lm)              W <- W + (alpha / rank) B A, and the plain layer back in place:
                                    the same modules and parameter names as before `add_adapters`
    holds_adapters(weights)         whether a safetensors file is a checkpoint of a LoRA stage

Training checkpoints hold the adapters (`...c_attn.base_layer.weight`, `...lora_A.default.weight`),
so a resumed run continues them; a finished model folder holds merged weights only, and loads,
captions, serves and exports without peft.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from visembed.config import CaptionerConfig, ConfigError

INSTALL = "pip install peft  (in a checkout: pip install -e '.[lora]')"


class PeftMissing(ConfigError):
    """LoRA was asked for where peft is not installed."""


def require_peft() -> None:
    """Fail now, with the command that fixes it, where peft is missing."""
    try:
        import peft  # noqa: F401
    except ImportError:
        raise PeftMissing(f"LoRA (model.captioner.lora_rank > 0, --lora) needs the peft package: {INSTALL}; "
                          "or train the whole LM with lora_rank 0") from None


def add_adapters(lm: nn.Module, cfg: CaptionerConfig) -> int:
    """Adapters of `cfg.lora_rank` on `lm` in place (its own weights frozen); returns how many
    layers got one."""
    require_peft()
    rank, alpha = cfg.lora_rank, cfg.lora_alpha or 2 * cfg.lora_rank
    from peft import LoraConfig, inject_adapter_in_model
    from transformers.pytorch_utils import Conv1D

    lm.requires_grad_(False)
    # GPT-2's Conv1D stores its weight (in, out): its update is (B A) transposed
    conv1d = any(isinstance(m, Conv1D) for m in lm.modules())
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none", target_modules="all-linear",
                        fan_in_fan_out=conv1d)
    inject_adapter_in_model(config, lm)
    return len(adapted_layers(lm))


def adapted_layers(lm: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every layer of `lm` that carries an adapter."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(name, m) for name, m in lm.named_modules() if isinstance(m, BaseTunerLayer)]


def merge_adapters(lm: nn.Module) -> None:
    """Fold each adapter into the weight it adapts and put the plain layer back (in place)."""
    for name, layer in adapted_layers(lm):
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(lm.get_submodule(parent), child, layer.get_base_layer())
    if hasattr(lm, "peft_config"):  # set by peft on injection
        del lm.peft_config


def holds_adapters(weights: Path) -> bool:
    """Whether `weights` holds adapters: a checkpoint of a LoRA stage (a run under way)."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), "pt") as f:
            return any(".lora_A." in name for name in f.keys())
    except Exception:  # a damaged file: load_weights names it
        return False
