"""The architecture: stage grammar, model spec, presets, block plan (counts), family files; the PyTorch
builder (layers, model) and ONNX export.

May import: effx_serve.core. grammar, spec, presets, plan and family_file never import torch (the serving
path and the roofline read specs); layers, model and export need it (the `train` extra).
"""
