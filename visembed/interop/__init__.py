"""To and from other projects' formats: one module per format, above models/ and train/.

    cache.py       `hf:PATH` / `openclip:PATH` -> a cached visembed model folder (`resolve_model`), the
                   one door through which `visembed.load`, `train --init`, eval, merge and index read
                   foreign checkpoints
    hf_names.py    the weight-name table between transformers' CLIP/SigLIP and our towers (both ways)
    hf_import.py   a transformers CLIPModel / SiglipModel folder -> a visembed model folder
    hf_folder.py   what every transformers folder we write shares (strict weights, CLIP vision config,
                   image processor, the 4.x compatibility patch, `ExportError`)
    hf_export.py   a visembed folder -> CLIPModel / VisionTextDualEncoderModel (a captioner: llava.py)
    llava.py       a visembed captioner -> LlavaForConditionalGeneration
    openclip.py    an OpenCLIP checkpoint -> a visembed model folder
    onnx.py        a visembed folder -> onnxruntime graphs

The modules import each other in one direction only (the shared hf_names / hf_folder at the bottom,
the converters above them, the cache above the importers); what they share is public. Nothing below this package
imports it: the command layer and `visembed.api` resolve `hf:` / `openclip:` specs before handing
a plain folder down. Importing this package loads nothing heavy.
"""
