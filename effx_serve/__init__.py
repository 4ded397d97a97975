"""effx-serve: hardware-aware EfficientNet-X families, served by SLA.

The packages are layers (docs/architecture.md draws them; import-linter enforces them in CI):

    cli                      the command line: the only module that imports every stage
    serve   search  loadtest the applications: HTTP serving, NAS and LACS, load tests (independent)
    repository               the Triton model repository and its manifest
    perf                     roofline, timing, latency store and model
    hardware   training      detection and ceilings | the model and its training
    core                     errors, files, image preprocessing, plots, processes

`training`, `search` and `loadtest` are top-level packages beside this one; the serving path (serve,
repository reading, core) never imports torch.
"""

__version__ = "0.1.0"
