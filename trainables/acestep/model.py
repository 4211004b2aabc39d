"""ACE-Step's diffusion transformer (``diffusers``' ``AceStepTransformer1DModel``) conditioned
on prompt tags by a tag encoder trained with it.

The transformer is ACE-Step 1.5's DiT as ``diffusers`` ships it: patchified latents, blocks of
self-attention (alternately over a sliding window and the whole clip), cross-attention to the
condition and a SwiGLU MLP, each modulated by the timestep. Its projections keep ACE-Step's
names (``to_q``, ``to_k``, ``to_v``, ``to_out.0``), the seed trainer's LoRA targets. Here it
generates the mel latent of ``latent.py`` with no context latents (text-to-music only).

The tag encoder: each tag is the mean of its words' embeddings (``tags.tokens``), a learned
token stands first for "whatever the prompt", and two transformer layers let tags see each
other. Tags that are padding come out as zeros, in training and evaluation alike. A prompt
with no tags is just the first token: the unconditional model of classifier-free guidance.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from trainables.acestep import tags as tag_text

TINY = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 32, "patch_size": 2, "sliding_window": 32}
TEXT = {"dim": 128, "layers": 2, "heads": 4}


class TagEncoder(nn.Module):
    def __init__(self, dim: int = 128, layers: int = 2, heads: int = 4, vocab: int = tag_text.VOCAB):
        super().__init__()
        self.words = nn.Embedding(vocab, dim, padding_idx=0)
        self.first = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, tags, words) int tokens -> (B, 1 + tags, dim)."""
        present = (tokens > 0).float()
        count = present.sum(-1, keepdim=True)
        tag = (self.words(tokens) * present[..., None]).sum(-2) / count.clamp_min(1.0)
        is_tag = count.squeeze(-1) > 0
        x = torch.cat([self.first.expand(len(tokens), -1, -1), tag], 1)
        keep = torch.cat([torch.ones_like(is_tag[:, :1]), is_tag], 1)
        x = self.encoder(x, src_key_padding_mask=~keep)
        return self.norm(x) * keep[..., None].float()


class TextToMusic(nn.Module):
    """``forward(noisy, sigma, tokens)``: noisy latents (B, frames, channels), noise levels
    sigma (B,) in [0, 1], tag tokens -> the predicted velocity (noise - clean), like the latents."""

    def __init__(self, channels: int = 64, transformer: dict | None = None, text: dict | None = None):
        super().__init__()
        from diffusers import AceStepTransformer1DModel

        self.kwargs = {"channels": channels, "transformer": dict(transformer or TINY), "text": dict(text or TEXT)}
        t = self.kwargs["transformer"]
        self.text_encoder = TagEncoder(**self.kwargs["text"])
        self.transformer = AceStepTransformer1DModel(in_channels=channels, audio_acoustic_hidden_dim=channels,
                                                     encoder_hidden_size=self.kwargs["text"]["dim"], **t)
        self.channels = channels

    def prompt(self, tags: list[str], seconds: float | None = None) -> np.ndarray:
        """The tags as this model reads them: (MAX_TAGS, MAX_WORDS) word tokens (``tags.tokens``)."""
        return tag_text.tokens(tags)

    def condition(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(tokens)

    def forward(self, noisy: torch.Tensor, sigma: torch.Tensor, tokens: torch.Tensor,
                condition: torch.Tensor | None = None) -> torch.Tensor:
        cond = self.condition(tokens) if condition is None else condition
        context = noisy.new_zeros(noisy.shape[0], noisy.shape[1], 0)  # no source latents: text-to-music
        sigma = sigma.to(noisy.dtype)
        return self.transformer(hidden_states=noisy, timestep=sigma, timestep_r=sigma, encoder_hidden_states=cond,
                                context_latents=context, return_dict=False)[0]
