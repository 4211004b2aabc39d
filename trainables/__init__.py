"""rankhouse's data plane: everything a Ray worker executes (loop, model families, LoRA, data).

Nothing here imports ``platform`` (the control plane): a Ray worker needs only this package,
and ``platform`` shadows the standard-library module of that name (see platform/__init__.py).
"""
