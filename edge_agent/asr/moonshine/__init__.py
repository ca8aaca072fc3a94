"""Moonshine base (encoder-decoder) on onnxruntime, behind the stream interface."""
