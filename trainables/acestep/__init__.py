"""The ACE-Step family: text-to-music LoRA on ACE-Step's diffusion transformer, with the
validation the seed trainer lacks.

- ``convert``: the seed's data layout (``name.mp3``, ``name_prompt.txt``, optional
  ``name_lyrics.txt``) -> the Hugging Face dataset ACE-Step's trainer reads;
- ``tags``: prompt tags: parsing, the embedded corpus's tags, tokens for the tag encoder;
- ``corpus``: rendered songs in the seed's layout, converted, for the embedded default;
- ``latent``: the fixed normalised log-mel the tiny bases generate, and its way back to audio;
- ``model``: ``diffusers``' ``AceStepTransformer1DModel`` conditioned by a tag encoder;
- ``flow``: flow matching as the trainer does it, its fixed-quantile validation, and sampling;
- ``dataset``: converted datasets opened as mel clips and training crops;
- ``task``: the ``Task``; ``family``: the ``Family``.
"""
