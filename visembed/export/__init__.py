"""Export: visembed model folders written in other projects' formats (ONNX, transformers)."""
