"""The base every other package builds on: the error root, file writing and reading, image preprocessing,
plots and local processes.

May import: nothing of ours (the standard library, numpy, Pillow; matplotlib only when a plot is drawn).
Never imports torch.
"""
