"""Export visembed models to other projects' formats: `hf.py` (transformers CLIPModel or
VisionTextDualEncoderModel folders) and `onnx.py` (onnxruntime graphs). Imports from transformers
and OpenCLIP live in `visembed.models` (`hf_import.py`, `openclip_import.py`, through `sources.py`),
below training, so that `train --init hf:PATH` can use them."""
