"""The model and its training: arch/ (spec, builder, export) and the training loop (data, demo data, recipe,
optimizer, EMA, checkpoints, distributed, loop).

May import: effx_serve.core only. Importing this package does not import torch: arch's spec modules,
recipe and demo_data never do; the builder, export, data loading and training modules need it.
"""
