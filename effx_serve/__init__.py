"""effx-serve: hardware-aware EfficientNet-X families, served by SLA.

The serving path (app, router, backends, preprocessing) never imports torch.
"""

__version__ = "0.1.0"
