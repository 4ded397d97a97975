"""Model side of effx-serve: architecture spec, builder, counting, data, training and ONNX export.

Importing this package does not import torch. The spec, grammar, presets, plan, recipe and demo-data
modules never do; the builder, export, data loading and training modules need it (the `train` extra).
"""
