"""ONNX export: a visembed model folder -> graphs that onnxruntime runs without visembed or torch.

`export_onnx(model_dir, out)` writes into `out`:

    image_encoder.onnx     pixels float32 (N, 3, S, S), RGB in [0, 1] -> image_embeds float32 (N, D)
    text_encoder.onnx      input_ids int64 (N, T), attention_mask int64 (N, T) -> text_embeds (N, D)
    tokenizer.json         HF `tokenizers`: `Tokenizer.from_file(...).encode_batch(texts)` gives the
                           ids and mask the text graph reads (special tokens, truncation, padding set)
    text_encoder_cjk.onnx  only for a model with a CJK student (`model.text.cjk_student`): the same
    tokenizer_cjk.json     inputs and outputs, for texts that contain CJK characters
    preprocessing.json     resize and crop (the one step left outside the graphs), the graphs'
                           inputs and outputs, and the CJK routing rule
    README.md              the model card

Both graphs end as `visembed.load(dir).encode_image` / `encode_text` do: L2-normalised embeddings.
The image graph takes pixels in [0, 1] and applies the tower's mean and std itself, so a consumer
only resizes and crops (shorter side to S, bicubic, then the centre S x S square), as `visembed.load`. Batch size is dynamic in
both graphs, and so is the sequence length T (at most the tower's context length, which the
tokenizer's truncation keeps).

A CJK student cannot be one graph with the English tower: the routing is a test on the strings
(`visembed.models.text_hf.has_cjk`), which a graph of token ids cannot see. So a second text graph
and its tokenizer are written, and preprocessing.json names the character ranges that choose it.

Exporter: the TorchScript-based `torch.onnx.export(..., dynamo=False)`, opset 17. The dynamo
exporter (torch's default since 2.9) needs `onnxscript`, which visembed does not depend on; the
TorchScript one needs nothing beyond torch, handles every tower here, and runs offline. A locked
EfficientNet's feature cache hashes pixels in Python and cannot be traced: it is switched off
before export (the cache is a training device; the graph computes the tower every time).

After writing, each graph is run once with onnxruntime on a small batch and compared with the
torch model; a difference above 1e-4 fails the export.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from visembed.atomic import atomic_write, atomic_write_json, atomic_write_text, new_dir
from visembed.interop.hf_folder import ExportError

IMAGE_GRAPH = "image_encoder.onnx"
TEXT_GRAPH = "text_encoder.onnx"
CJK_TEXT_GRAPH = "text_encoder_cjk.onnx"
CAPTIONER_FEATURES_GRAPH = "captioner_image_features.onnx"  # a captioner's frozen image side (runtime cache only)
TOKENIZER_FILE = "tokenizer.json"
CJK_TOKENIZER_FILE = "tokenizer_cjk.json"
PREPROCESSING_FILE = "preprocessing.json"
OPSET = 17
TOLERANCE = 1e-4  # largest |onnxruntime - torch| the export accepts on its own check
SAMPLE_TEXTS = ["a red circle left of a blue square", "cat", "一只猫在草地上"]


class ImageGraph(nn.Module):
    """pixels (N, 3, S, S) in [0, 1] -> L2-normalised image embeddings (N, D); mean/std inside."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(pixels), dim=-1)


class TextGraph(nn.Module):
    """(input_ids, attention_mask) (N, T) -> L2-normalised text embeddings (N, D): a text tower's
    `forward(ids, mask)` followed by the projections into the shared space."""

    def __init__(self, tower: nn.Module, projection: nn.Module):
        super().__init__()
        self.tower = tower
        self.projection = projection

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(self.tower(input_ids, attention_mask)), dim=-1)


def export_onnx(model_dir: str | Path, out: str | Path) -> None:
    """Write the image and text graphs, tokenizer(s), preprocessing.json and a model card into `out`.
    A classifier folder (`visembed classify fit`) gets `export_classifier_onnx` instead."""
    from visembed.classify.folder import is_classifier_folder
    from visembed.models import load_model_folder

    if is_classifier_folder(model_dir):
        return export_classifier_onnx(model_dir, out)
    _require_runtime()
    model_dir, out = Path(model_dir), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):  # the model folder itself among them
        raise ExportError(f"{out} already exists and is not empty; choose a new --out")
    model, cfg = load_model_folder(model_dir, "cpu")  # (feature cache off: a Python-side cache cannot be traced)
    model = getattr(model, "encoder", model)  # a captioner: its dual encoder (the causal LM is not exported)
    with new_dir(out) as tmp:  # complete or absent: a killed export leaves no half folder under --out
        _write_graphs(model, cfg, model_dir, tmp)


def _write_graphs(model: nn.Module, cfg, model_dir: Path, out: Path) -> None:
    size = cfg.model.vision.image_size

    pixels = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    _export(ImageGraph(model), (pixels,), out / IMAGE_GRAPH, ["pixels"], "image_embeds")

    text_entries = {}
    for graph_file, tokenizer_file, tower, projection, tokenizer in _text_graphs(model):
        atomic_write(out / tokenizer_file, tokenizer.save)
        ids, mask = _encode(tokenizer, SAMPLE_TEXTS)
        _export(TextGraph(tower, projection), (ids, mask), out / graph_file, ["input_ids", "attention_mask"], "text_embeds")
        text_entries[graph_file] = {"graph": graph_file, "tokenizer": tokenizer_file,
                                    "inputs": {"input_ids": "int64 (N, T)", "attention_mask": "int64 (N, T), 1 = real token"},
                                    "output": "text_embeds float32 (N, D), L2-normalised",
                                    "max_length": tokenizer.truncation["max_length"]}

    atomic_write_json(out / PREPROCESSING_FILE, _preprocessing(cfg, text_entries))
    atomic_write_text(out / "README.md", _card(cfg, model_dir, text_entries))


CLASSIFIER_GRAPH = "classifier.onnx"
CLASSES_FILE = "classes.json"


def export_classifier_onnx(classifier_dir: str | Path, out: str | Path) -> None:
    """A classifier folder -> `classifier.onnx` (pixels float32 (N, 3, S, S) in [0, 1] -> probabilities
    float32 (N, C)), `classes.json` (column i's class name), `preprocessing.json` and a card."""
    from visembed.classify.folder import read_config, read_head, model_folder
    from visembed.classify.torch_head import HeadModule, ProbabilityNet
    from visembed.models import load_model_folder

    _require_runtime()
    classifier_dir, out = Path(classifier_dir), Path(out)
    config = read_config(classifier_dir)
    head = read_head(classifier_dir, config)
    model, cfg = load_model_folder(model_folder(classifier_dir, config), "cpu")
    out.mkdir(parents=True, exist_ok=True)
    size = cfg.model.vision.image_size
    pixels = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    _export(ProbabilityNet(model, HeadModule(head)), (pixels,), out / CLASSIFIER_GRAPH, ["pixels"], "probabilities")
    atomic_write_json(out / CLASSES_FILE, config["classes"])
    v = cfg.model.vision
    atomic_write_json(out / PREPROCESSING_FILE, {
        "format": "visembed-onnx-classifier/1", "graph": CLASSIFIER_GRAPH, "classes": CLASSES_FILE,
        "method": config["method"],
        "resize": f"shorter side to {size} px (bicubic), then the centre {size}x{size} square", "image_size": size,
        "input": "pixels float32 (N, 3, S, S), RGB, channels first, values in [0, 1] (uint8 / 255)",
        "normalisation": "inside the graph: do not apply mean/std", "mean_std_in_graph": {"mean": v.mean, "std": v.std},
        "output": "probabilities float32 (N, C): column i is classes.json[i]"})
    atomic_write_text(out / "README.md", "\n".join([
        f"# visembed classifier ({config['method']}), ONNX export", "",
        f"- `{CLASSIFIER_GRAPH}`: `pixels` float32 (N, 3, {size}, {size}), RGB in [0, 1] -> `probabilities` (N, "
        f"{len(config['classes'])})", f"- `{CLASSES_FILE}`: the class of each column",
        f"- `{PREPROCESSING_FILE}`: resize and crop, inputs and outputs", "", "```python",
        "import json, numpy as np, onnxruntime", f"classes = json.load(open('{CLASSES_FILE}'))",
        f"probs = onnxruntime.InferenceSession('{CLASSIFIER_GRAPH}').run(None, {{'pixels': pixels}})[0]",
        "print(classes[int(probs[0].argmax())])", "```", ""]))


class CaptionerFeaturesGraph(nn.Module):
    """pixels (N, 3, S, S) in [0, 1] -> a captioner's frozen image features (N, D + cells * W): the
    L2-normalised embedding, then the tower's cells, flat (what `Captioner.features` computes)."""

    def __init__(self, captioner: nn.Module):
        super().__init__()
        self.captioner = captioner

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.captioner.features(pixels)  # (a loaded captioner has no feature cache: it traces)


def export_captioner_features(model_dir: str | Path, out: str | Path) -> None:
    """Write `CAPTIONER_FEATURES_GRAPH` of a captioner folder into the folder `out` (checked against
    torch like every graph here): what the onnx backend runs of a captioner's image side."""
    from visembed.models import load_model_folder

    _require_runtime()
    model, cfg = load_model_folder(Path(model_dir), "cpu")
    size = cfg.model.vision.image_size
    pixels = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    _export(CaptionerFeaturesGraph(model), (pixels,), Path(out) / CAPTIONER_FEATURES_GRAPH, ["pixels"], "features")


# --- graphs --------------------------------------------------------------------------------------


def _text_graphs(model: nn.Module):
    """(graph file, tokenizer file, tower, projection, tokenizers.Tokenizer) per text graph."""
    cfg = model.cfg.text
    if cfg.kind == "transformer":
        yield TEXT_GRAPH, TOKENIZER_FILE, model.text, model.text_projection, _bpe_tokenizer(model.text)
        return
    if cfg.kind != "hf":
        raise ValueError(f"ONNX export does not know the text tower kind {cfg.kind!r}")
    encoder = model.text.encoder
    if hasattr(encoder, "set_attn_implementation"):  # plain matmul attention traces into portable ONNX ops
        encoder.set_attn_implementation("eager")
    yield TEXT_GRAPH, TOKENIZER_FILE, model.text, model.text_projection, _hf_tokenizer(model.text)
    if model.text.student is not None:
        student = model.text.student
        yield (CJK_TEXT_GRAPH, CJK_TOKENIZER_FILE, student, nn.Sequential(model.text.student_proj, model.text_projection),
               _bpe_tokenizer(student))


def _bpe_tokenizer(tower: nn.Module):
    """The BPE tower's tokenizer.json with what `BPETokenizer.encode_batch` does by hand written into
    it: `<bos> ... <eos>` (a post-processor), truncation to the context length that keeps `<eos>`,
    padding with the pad id to the longest text of a batch."""
    from tokenizers import Tokenizer, processors

    bpe = tower.tokenizer
    tok = Tokenizer.from_str(bpe.tokenizer.to_str())
    eos = tok.id_to_token(bpe.eos_id)
    if bpe.bos_id is None:  # an end token only (SigLIP's)
        tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}", special_tokens=[(eos, bpe.eos_id)])
    else:
        bos = tok.id_to_token(bpe.bos_id)
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A {eos}",
                                                           special_tokens=[(bos, bpe.bos_id), (eos, bpe.eos_id)])
    tok.enable_truncation(max_length=tower.context_length)  # counts the special tokens: <eos> always stays
    # last-position pooling (SigLIP) reads the text padded to the full context length
    length = tower.context_length if tower.pool_kind == "last" else None
    tok.enable_padding(pad_id=bpe.pad_id, pad_token=tok.id_to_token(bpe.pad_id), length=length)
    return tok


def _hf_tokenizer(tower: nn.Module):
    """The HF tower's own fast tokenizer with the truncation and padding its `tokenize` asks for."""
    from tokenizers import Tokenizer

    hf = tower.tokenizer
    if not getattr(hf, "is_fast", False):
        raise ValueError(f"the text tower's tokenizer ({type(hf).__name__}) has no tokenizer.json (not a fast tokenizer)")
    tok = Tokenizer.from_str(hf.backend_tokenizer.to_str())
    tok.enable_truncation(max_length=tower.max_length)
    tok.enable_padding(pad_id=hf.pad_token_id, pad_token=hf.pad_token)
    return tok


def _encode(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    encodings = tokenizer.encode_batch(texts)
    ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)  # (N, T)
    mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)  # (N, T)
    return ids, mask


def _export(graph: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, input_names: list[str], output_name: str) -> None:
    """Trace `graph` to `path` (batch, and sequence length for 2-d inputs, dynamic), then check it
    with onnxruntime against torch on the same inputs."""
    graph.eval()
    axes = {name: ({0: "batch", 1: "sequence"} if x.dim() == 2 else {0: "batch"}) for name, x in zip(input_names, inputs)}
    axes[output_name] = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape arithmetic (fixed image size) and the exporter's deprecation
        atomic_write(path, lambda tmp: torch.onnx.export(
            graph, inputs, tmp, input_names=input_names, output_names=[output_name], dynamic_axes=axes,
            opset_version=OPSET, do_constant_folding=True, dynamo=False))
        expected = graph(*inputs).numpy()
    got = run_graph(path, dict(zip(input_names, (x.numpy() for x in inputs))))
    diff = float(abs(got - expected).max())
    if diff > TOLERANCE:
        raise RuntimeError(f"{path.name}: onnxruntime differs from the torch model by {diff:.2e} (> {TOLERANCE}); "
                           "the export is not faithful")


def run_graph(path: str | Path, inputs: dict) -> "numpy.ndarray":  # noqa: F821
    """Run a graph written here with onnxruntime on the CPU; -> its one output."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)[0]


class MissingRuntime(ExportError, ImportError):
    """onnx or onnxruntime is not installed (the `onnx` extra): an ExportError, so the CLI says it in one line."""


def _require_runtime() -> None:
    try:
        import onnx  # noqa: F401  (the exporter serialises through it)
        import onnxruntime  # noqa: F401  (every export is checked with it)
    except ImportError as err:
        raise MissingRuntime(f"ONNX export needs onnx and onnxruntime ({err.name} is missing): "
                          "pip install 'visembed[onnx]'") from None


# --- metadata ------------------------------------------------------------------------------------


def _preprocessing(cfg, text_entries: dict) -> dict:
    from visembed.models.text_hf import CJK_CHARACTERS

    v = cfg.model.vision
    prep = {
        "format": "visembed-onnx/1",
        "embed_dim": cfg.model.embed_dim,
        "image": {
            "graph": IMAGE_GRAPH,
            "resize": f"shorter side to {v.image_size} px (bicubic), then the centre {v.image_size}x{v.image_size} square",
            "image_size": v.image_size,
            "input": "pixels float32 (N, 3, S, S), RGB, channels first, values in [0, 1] (uint8 / 255)",
            "normalisation": "inside the graph: do not apply mean/std",
            "mean_std_in_graph": {"mean": v.mean, "std": v.std},
            "output": "image_embeds float32 (N, D), L2-normalised",
        },
        "text": text_entries[TEXT_GRAPH],
    }
    if CJK_TEXT_GRAPH in text_entries:
        prep["text_cjk"] = {**text_entries[CJK_TEXT_GRAPH], "route": "texts with a character matching this regular "
                            "expression go to this graph, all others to text", "regex": CJK_CHARACTERS.pattern}
    return prep


def _card(cfg, model_dir: Path, text_entries: dict) -> str:
    from visembed.models.card import model_card, run_metrics

    card = model_card(cfg, run_metrics(model_dir)).replace("Load it with `visembed.load(folder)`.",
                                                                 "This folder holds its ONNX export.")
    v = cfg.model.vision
    lines = ["", "## ONNX files", "",
             f"- `{IMAGE_GRAPH}`: `pixels` float32 (N, 3, {v.image_size}, {v.image_size}), RGB in [0, 1] "
             "(mean and std applied inside) -> `image_embeds` (N, D), L2-normalised",
             f"- `{TEXT_GRAPH}`: `input_ids`, `attention_mask` int64 (N, T) from `{TOKENIZER_FILE}` -> `text_embeds` "
             "(N, D), L2-normalised"]
    if CJK_TEXT_GRAPH in text_entries:
        lines.append(f"- `{CJK_TEXT_GRAPH}` with `{CJK_TOKENIZER_FILE}`: the same, for texts with CJK characters "
                     f"(the rule is in `{PREPROCESSING_FILE}`)")
    lines += [f"- `{PREPROCESSING_FILE}`: resize and crop, inputs and outputs", "",
              "```python", "import numpy as np, onnxruntime, tokenizers",
              f"tok = tokenizers.Tokenizer.from_file('{TOKENIZER_FILE}')",
              "enc = tok.encode_batch(['a red apple'])",
              f"text = onnxruntime.InferenceSession('{TEXT_GRAPH}')",
              "emb = text.run(None, {'input_ids': np.array([e.ids for e in enc], np.int64),",
              "                      'attention_mask': np.array([e.attention_mask for e in enc], np.int64)})[0]",
              "```"]
    return card + "\n".join(lines) + "\n"
