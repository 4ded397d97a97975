"""Latency-aware compound scaling (the paper's Section 4): coefficient search (lacs), its job (lacs.json,
family.json) and training a whole family (build_family, including the demo)."""
