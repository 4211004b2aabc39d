"""LoRA for the layers PEFT has none for, registered through PEFT's custom-module mechanism so
they save, load and merge like the built-in ones (``CUSTOM_MODULES``, given to every
``LoraConfig`` by ``trainables.lora``).

- ``LoraConvTranspose``: ConvTranspose1d/2d (HT-Demucs' decoders, SCNet's band merges).
- ``LoraConv1d`` / ``LoraConv2d``: PEFT's own Conv LoRA, except that A keeps the base layer's
  dilation. PEFT 0.21 drops it, so a dilated convolution's update has another output length
  (a shape error) or, where the lengths happen to agree, is another function from the one its
  merge writes (the structure model's dilated convolutions are LoRA targets).
- ``LoraLSTM``: nn.LSTM (SCNet's dual-path BiLSTMs, three quarters of that model). Each weight
  matrix ``weight_ih_l{k}`` and ``weight_hh_l{k}`` (and its ``_reverse``) gets its own low-rank
  update ``scaling * B @ A``; the LSTM runs with the updated weights, so merging is exact (the
  merged LSTM is the same function). Biases are not adapted.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from peft.tuners.lora.layer import Conv1d as PeftConv1d
from peft.tuners.lora.layer import Conv2d as PeftConv2d
from peft.tuners.lora.layer import LoraLayer, _ConvNd
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


class DilationKept:
    """PEFT's Conv LoRA with A dilated as the base layer is; B is pointwise either way, so
    the merged kernel (B @ A per tap) is exact. Undilated layers are built as PEFT builds them."""

    def update_layer(self, adapter_name, r, lora_alpha, config, **kwargs):
        super().update_layer(adapter_name, r, lora_alpha, config, **kwargs)
        base = self.get_base_layer()
        if all(d == 1 for d in base.dilation):
            return
        if config.use_dora:
            raise ValueError("DoRA is not supported for dilated convolutions")
        old = self.lora_A[adapter_name]
        self.lora_A[adapter_name] = type(old)(old.in_channels, r, base.kernel_size, base.stride, base.padding,
                                              dilation=base.dilation, bias=False)
        if config.init_lora_weights:
            self.reset_lora_parameters(adapter_name, config.init_lora_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)


class LoraConv1d(DilationKept, PeftConv1d):
    pass


class LoraConv2d(DilationKept, PeftConv2d):
    pass


def lstm_weights(lstm: nn.LSTM) -> list[str]:
    """The weight matrices of an LSTM that LoRA adapts: input-hidden and hidden-hidden, every
    layer and direction."""
    return [name for name in lstm._flat_weights_names if name.startswith(("weight_ih", "weight_hh"))]


class LoraLSTM(nn.Module, LoraLayer):
    """LoRA on every weight matrix of an nn.LSTM: ``lora_A[adapter][name]`` (r, in) and
    ``lora_B[adapter][name]`` (4 * hidden, r) per matrix; B starts at zero, so the adapted LSTM
    is the base one until it trains."""

    def __init__(self, base_layer: nn.LSTM, adapter_name: str, config, r: int = 0, lora_alpha: int = 1, **kwargs):
        if config.use_dora:
            raise ValueError("DoRA is not supported for LSTM layers")
        if base_layer.proj_size:
            raise ValueError("LoRA for LSTM does not support proj_size")
        super().__init__()
        LoraLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha, config)

    def _get_in_out_features(self, module: nn.Module):
        return module.input_size, module.hidden_size

    def update_layer(self, adapter_name, r, lora_alpha, config, **kwargs):
        if config.lora_dropout:
            # the update is on the weights, not on an input PEFT could drop: refuse rather than ignore it
            raise ValueError(f"lora_dropout {config.lora_dropout}: not supported for LSTM layers; set it to 0")
        base = self.get_base_layer()
        self.r[adapter_name], self.lora_alpha[adapter_name] = r, lora_alpha
        self.lora_dropout[adapter_name] = nn.Identity()
        self.lora_A[adapter_name] = nn.ParameterDict(
            {n: nn.Parameter(torch.empty(r, getattr(base, n).shape[1])) for n in lstm_weights(base)})
        self.lora_B[adapter_name] = nn.ParameterDict(
            {n: nn.Parameter(torch.zeros(getattr(base, n).shape[0], r)) for n in lstm_weights(base)})
        for a in self.lora_A[adapter_name].values():
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # as PEFT initialises a Linear's A
        self.lora_bias[adapter_name] = False
        self.scaling[adapter_name] = lora_alpha / (math.sqrt(r) if config.use_rslora else r)
        self.use_rslora[adapter_name] = config.use_rslora
        self.use_dora[adapter_name] = False
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def deltas(self, adapter: str) -> dict[str, torch.Tensor]:
        a, b = self.lora_A[adapter], self.lora_B[adapter]
        return {n: (b[n] @ a[n]) * self.scaling[adapter] for n in a}

    def get_delta_weight(self, adapter: str) -> dict[str, torch.Tensor]:
        return self.deltas(adapter)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        base = self.get_base_layer()
        for adapter in adapter_names or self.active_adapters:
            if adapter not in self.lora_A or adapter in self.merged_adapters:
                continue
            deltas = self.deltas(adapter)
            if safe_merge and not all(torch.isfinite(getattr(base, n).data + d).all() for n, d in deltas.items()):
                raise ValueError(f"NaNs detected in the merged weights of adapter {adapter}")
            with torch.no_grad():
                for n, d in deltas.items():
                    getattr(base, n).data += d.to(getattr(base, n).dtype)
            self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        base = self.get_base_layer()
        while self.merged_adapters:
            adapter = self.merged_adapters.pop()
            with torch.no_grad():
                for n, d in self.deltas(adapter).items():
                    getattr(base, n).data -= d.to(getattr(base, n).dtype)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any):
        base = self.get_base_layer()
        active = [a for a in self.active_adapters if a in self.lora_A]
        if self.disable_adapters or self.merged or not active:
            return base(x, *args, **kwargs)
        weights = {n: getattr(base, n) for n in lstm_weights(base)}
        for adapter in active:
            deltas = self.deltas(adapter)
            weights = {n: w + deltas[n].to(w.dtype) if n in deltas else w for n, w in weights.items()}
        # the LSTM kernel runs with the updated matrices (biases and everything else as they are)
        return torch.func.functional_call(base, weights, (x, *args), kwargs)

    def __repr__(self) -> str:
        return "lora." + super().__repr__()


CUSTOM_MODULES = {nn.ConvTranspose1d: LoraConvTranspose, nn.ConvTranspose2d: LoraConvTranspose, nn.LSTM: LoraLSTM,
                  nn.Conv1d: LoraConv1d, nn.Conv2d: LoraConv2d}
