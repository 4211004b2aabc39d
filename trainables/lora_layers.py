"""LoRA for the layers PEFT has none for, registered through PEFT's custom-module mechanism so
they save, load and merge like the built-in ones (``CUSTOM_MODULES``, given to every
``LoraConfig`` by ``trainables.lora``).

- ``LoraConvTranspose``: ConvTranspose1d/2d (HT-Demucs' decoders).
"""

from __future__ import annotations

import math

import torch
from peft.tuners.lora.layer import _ConvNd
from torch import nn


class LoraConvTranspose(_ConvNd):
    """LoRA for ConvTranspose{1,2}d: A is a transposed conv with the base's kernel/stride/padding
    into r channels, B a pointwise map r -> out. Their composition is itself a transposed conv
    with weight W[i, o, k] = sum_r A[i, r, k] B[r, o], so merging is exact."""

    def _get_in_out_features(self, module: nn.Module):
        return module.in_channels, module.out_channels

    @property
    def lora_variants(self):
        return {(): None}

    def update_layer(self, adapter_name, r, lora_alpha, config, **kwargs):
        if config.use_dora:
            raise ValueError("DoRA is not supported for ConvTranspose layers")
        base = self.get_base_layer()
        if base.groups != 1 or base.dilation != (1,) * len(base.dilation):
            raise ValueError("LoRA for ConvTranspose supports groups=1 and dilation=1 only")
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.lora_dropout[adapter_name] = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        conv = type(base)
        ones = (1,) * len(base.kernel_size)
        self.lora_A[adapter_name] = conv(self.in_features, r, base.kernel_size, base.stride, base.padding,
                                         output_padding=base.output_padding, bias=False)
        self.lora_B[adapter_name] = conv(r, self.out_features, ones, ones, bias=False)
        self.lora_bias[adapter_name] = False
        self.scaling[adapter_name] = lora_alpha / (math.sqrt(r) if config.use_rslora else r)
        self.use_rslora[adapter_name] = config.use_rslora
        self.use_dora[adapter_name] = False
        if config.init_lora_weights:
            self.reset_lora_parameters(adapter_name, config.init_lora_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def get_delta_weight(self, adapter) -> torch.Tensor:
        a = self.lora_A[adapter].weight  # (in, r, *k)
        b = self.lora_B[adapter].weight.flatten(2)[..., 0]  # (r, out)
        return torch.einsum("ir...,ro->io...", a, b) * self.scaling[adapter]


CUSTOM_MODULES = {nn.ConvTranspose1d: LoraConvTranspose, nn.ConvTranspose2d: LoraConvTranspose}
