"""Platform-aware NAS (the paper's Section 3): search space, controllers (RL, evolution, NSGA-II, TPE),
trial storage shared by workers, the worker loop, the job and its report."""
