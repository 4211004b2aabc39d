"""The structure family: boundaries, beats, downbeats, band energies and section labels of a
track, the EDM structure trainer's multi-task model done with LoRA and F-measures.

- ``annotations``: the trainer's annotation YAML, read and checked;
- ``corpus``: rendered songs whose arrangements vary, each section audible;
- ``targets``: frame-wise training targets at the model's frame rate;
- ``model``: the backbones (``cnn``, ``mert``) and the heads;
- ``metrics``: fixed peak picking and ``mir_eval`` scores;
- ``task``: the ``Task``; ``family``: the ``Family``.
"""
