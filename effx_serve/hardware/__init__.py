"""Hardware: detection of the accelerator, hardware ids and classes, the vendor table, measured ceilings.

May import: effx_serve.core. Detection never imports torch (torch_probe is kept apart for the CLI).
"""
