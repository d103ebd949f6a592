"""Model folders and training checkpoints, written atomically, never unpickled.

Model folder: `model.safetensors`, `config.json` (resolved RunConfig), `preprocessing.json` and the
towers' assets (`tokenizer.json`, `text_encoder/`). A run folder is a model folder plus
`checkpoints/step_XXXXXXXX/` ({model.safetensors, optimizer.pt, state.pt}) and `metrics.jsonl`.
Every file goes to a temporary name first, is flushed to disk and moved into place with its folder
fsynced (`visembed.atomic`), and a checkpoint folder appears under its final name only once complete:
a killed run, or a power cut, never leaves a half-written file where a reader would look. A damaged
file met on reading is a `ModelFolderError` that names it, never a traceback from a library.

A folder may come from someone else, so nothing is allocated on its config's word: `build_fitting`
first builds the model on torch's meta device (shapes, no memory), compares every weight with the
names, shapes and dtypes in the safetensors header (`read_header`, a few KB), and only then builds it
for real. A config that claims more than its weights file holds (a vocabulary of 3e7 over a 4 KB
file, a Llama at its default size where a 1-layer GPT-2 was trained) is one line, before any
allocation. `read_json` reads the folder's JSON files strictly: a size cap, no duplicate keys, no
nesting that exhausts the stack, no NaN or infinite numbers.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from visembed.atomic import atomic_write, atomic_write_json, replace_dir
from visembed.config import ConfigError, RunConfig, from_dict, to_dict

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
PREPROCESSING_FILE = "preprocessing.json"
CHECKPOINT_DIR = "checkpoints"


class ModelFolderError(FileNotFoundError):
    """A model or run folder that cannot be used: missing, corrupt, or for another model."""


MAX_JSON_BYTES = 64 * 1024 * 1024  # a config or tokenizer file beyond this is not one
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}  # safetensors' names
OTHER_DTYPES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16", "I32": "int32",
                "U32": "uint32", "I64": "int64", "U64": "uint64"}  # (torch's names, for messages)


def parse_json(text: str, where: str) -> Any:
    """`text` as JSON, strictly; any problem is a ValueError that starts with `where`."""
    def unique(pairs):  # (one pass: a tokenizer's vocabulary object has ~50,000 keys)
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"{where} has the key {key!r} twice (which one counts is ambiguous)")
            seen.add(key)
        return dict(pairs)

    def constant(name):  # NaN, Infinity: kept for _check_finite, which names the key
        return float(name.replace("Infinity", "inf"))

    try:
        data = json.loads(text, object_pairs_hook=unique, parse_constant=constant)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not valid JSON ({err})") from None
    except RecursionError:  # the parser recurses per level: 100,000 `[` exhaust the stack
        raise ValueError(f"{where} nests too deep to be a config or tokenizer file") from None
    _check_finite(data, where)
    return data


def _check_finite(data: Any, where: str) -> None:
    stack = [("", data)]
    while stack:
        key, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{where}: {key or 'a value'} holds {item}, not a finite number")
        if isinstance(item, dict):
            stack.extend((f"{key}.{k}" if key else str(k), v) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((f"{key}[{i}]", v) for i, v in enumerate(item))


def read_json(path: str | Path, error: type[Exception] | None = None) -> Any:
    """A JSON file of a model folder, strictly (`parse_json`), at most MAX_JSON_BYTES; problems are
    `error` (ModelFolderError by default) naming the file."""
    error = error or ModelFolderError
    path = Path(path)
    try:
        if not path.is_file():
            raise error(f"{path} does not exist or is not a regular file")
        if path.stat().st_size > MAX_JSON_BYTES:
            raise error(f"{path} is {path.stat().st_size:,} bytes: too large for a JSON config or tokenizer file")
        text = path.read_text(encoding="utf-8")
        return parse_json(text, str(path))
    except OSError as err:
        raise error(f"{path} cannot be read ({err.strerror or err})") from None
    except ValueError as err:  # bad UTF-8, or parse_json's
        message = str(err) if str(err).startswith(str(path)) else f"{path} is not valid JSON ({err})"
        raise error(message) from None


def read_header(path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (safetensors dtype such as "F32", shape) of every tensor in `path`, from its header only."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return {name: (f.get_slice(name).get_dtype(), tuple(f.get_slice(name).get_shape())) for name in f.keys()}
    except FileNotFoundError:
        raise ModelFolderError(f"{path} does not exist") from None
    except (SafetensorError, OSError) as err:
        raise ModelFolderError(f"{path} is corrupt (not a complete safetensors file: {err}); "
                               "copy or train it again") from None


def _saved_name(name: str) -> str:
    """A LoRA checkpoint's name of a base weight -> the plain model's (`q.base_layer.weight` -> `q.weight`)."""
    return name.replace(".base_layer.", ".")


def check_fits(expected: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Every tensor of `expected` (a model's state dict, on the meta device or not) must be in the
    safetensors file `path` with its shape, and a float weight must be stored as a float (an int8 or
    bool tensor would be cast silently): else a ModelFolderError naming the first that is not."""
    saved = {_saved_name(name): entry for name, entry in read_header(path).items() if ".lora_" not in name}
    for name, tensor in expected.items():
        if name not in saved:
            raise ModelFolderError(f"weights in {path} do not fit the model its config describes: no {name!r} "
                                   "in the file (was it saved with a different config?)")
        dtype, shape = saved[name]
        if shape != tuple(tensor.shape):
            raise ModelFolderError(f"weights in {path} do not fit the model its config describes: {name} has shape "
                                   f"{list(shape)} but the config makes it {list(tensor.shape)}")
        if tensor.is_floating_point() and dtype not in FLOAT_DTYPES:
            raise ModelFolderError(f"weights in {path}: {name} is stored as {OTHER_DTYPES.get(dtype, dtype)}, not a float; visembed does not "
                                   "cast integer or bool weights into a float model")


def build_fitting(build: Callable[[], torch.nn.Module], path: str | Path) -> torch.nn.Module:
    """`build()` once on the meta device (shapes only), checked against the weights in `path`
    (`check_fits`), then for real: a config never allocates more than its weights file holds."""
    with torch.device("meta"):
        planned = build()
    check_fits(unwrap(planned).state_dict(), path)
    del planned
    return build()


def _save_tensors(state: dict[str, torch.Tensor], path: Path) -> None:
    """Every name gets its own copy of tied weights (an LM's input embedding and output layer share
    one tensor; safetensors stores shared memory under one name only); loading ties them again."""
    tensors, seen = {}, set()
    for name, value in state.items():
        value = value.detach().contiguous().cpu()
        key = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
        tensors[name] = value.clone() if key in seen else value
        seen.add(key)
    atomic_write(path, lambda tmp: save_file(tensors, tmp))


def _torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a damaged file is a ModelFolderError that names it."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise ModelFolderError(f"{path} does not exist") from None
    except (SafetensorError, OSError) as err:  # truncated, random bytes, empty, absurd header size
        raise ModelFolderError(f"{path} is corrupt (not a complete safetensors file: {err}); "
                               "copy or train it again") from None


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise ModelFolderError(f"{path} does not exist") from None
    except Exception as err:  # torch raises RuntimeError, pickle and zip errors for damaged files
        raise ModelFolderError(f"{path} is corrupt ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model under DDP / torch.compile wrappers (never save a wrapper's names)."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model


def write_model_metadata(model: torch.nn.Module, cfg: RunConfig, out_dir: str | Path) -> None:
    """config.json, preprocessing.json and tower assets: all a folder needs besides weights."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / CONFIG_FILE, to_dict(cfg))
    v = cfg.model.vision
    prep = {"image_size": v.image_size, "resize": "shorter side, bicubic, centre crop", "mean": v.mean, "std": v.std,
            "pixel_range": [0, 1]}
    atomic_write_json(out / PREPROCESSING_FILE, prep)
    unwrap(model).save_assets(out)


def save_model_folder(model: torch.nn.Module, cfg: RunConfig, out_dir: str | Path) -> Path:
    """The final parameters: a folder `visembed.load` (and `--init`) can read."""
    out = Path(out_dir)
    write_model_metadata(model, cfg, out)
    _save_tensors(unwrap(model).state_dict(), out / MODEL_FILE)
    return out


def read_config(folder: str | Path) -> RunConfig:
    path = Path(folder) / CONFIG_FILE
    if not path.exists():
        raise ModelFolderError(f"{folder} is not a visembed model or run folder (no {CONFIG_FILE})")
    data = read_json(path)
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path} is not a visembed config (a JSON object is expected)")
    try:
        return from_dict(data)
    except (ConfigError, ValueError, TypeError) as err:
        raise ModelFolderError(f"{path} is not a valid visembed config: {err}") from None


def weights_path(folder: str | Path) -> Path:
    """The folder's final weights, or those of its newest checkpoint while a run is under way."""
    folder = Path(folder)
    if (folder / MODEL_FILE).is_file():
        return folder / MODEL_FILE
    ckpt = latest_checkpoint(folder)
    if ckpt is not None:
        return ckpt / MODEL_FILE
    raise ModelFolderError(f"no {MODEL_FILE} in {folder} and no checkpoint under {folder / CHECKPOINT_DIR}")


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load a safetensors file into `model` (unwrapped); damaged or mismatched weights are a
    ModelFolderError naming the file."""
    state = read_tensors(path)
    try:
        missing, unexpected = unwrap(model).load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ModelFolderError(f"weights in {path} do not fit the model: {str(err).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise ModelFolderError(
            f"weights in {path} do not fit the model (missing: {missing[:5]}, unexpected: {unexpected[:5]}); "
            "was it saved with a different config?"
        )


# ---------------------------------------------------------------------------------------------
# training checkpoints


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and (p / "state.pt").is_file())


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def save_training_state(run_dir: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoints/step_XXXXXXXX atomically; keep the newest `keep` checkpoints.

    `state` holds what else resuming needs (RNG states as tensors, data position, ...) and must
    load with `torch.load(weights_only=True)`: tensors, numbers, strings, lists and dicts.
    """
    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    _save_tensors(unwrap(model).state_dict(), tmp / MODEL_FILE)
    _torch_save(optimizer.state_dict(), tmp / "optimizer.pt")
    _torch_save({"step": step, **state}, tmp / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    replace_dir(tmp, final)
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_training_state(ckpt_dir: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Restore model (and optimiser) in place; return the saved state dict (with "step")."""
    ckpt = Path(ckpt_dir)
    load_weights(model, ckpt / MODEL_FILE)
    if optimizer is not None:
        optimizer.load_state_dict(_torch_load(ckpt / "optimizer.pt"))
    return _torch_load(ckpt / "state.pt")
