"""rankhouse's data plane: everything a Ray worker executes (loop, model families, LoRA, data).

Nothing here imports ``platform`` (the control plane); see DESIGN.md.
"""
