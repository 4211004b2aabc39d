"""The ``mert`` backbone: a HuBERT-architecture transformer (``transformers.HubertModel``), the
architecture of MERT, on raw audio at its own rate.

MERT-v1 is HuBERT's convolutional feature encoder (7 layers, strides 5, 2, 2, 2, 2, 2, 2: one
frame per 320 samples, 75 frames/s at 24 kHz) under a transformer encoder; its repository's
custom code (``trust_remote_code``) only adds an optional CQT input that MERT-v1 leaves off.
So a user's local MERT or HuBERT checkpoint folder (``config.json`` beside
``model.safetensors`` or ``pytorch_model.bin``) loads into ``HubertModel`` here: its config's
HuBERT fields are read, the weights are loaded by ``transformers`` from the folder only (never
a hub, ``weights_only`` for a ``.bin``), and any key that does not map is one error. The
seed trainer fed MERT 22.05 kHz audio; here the audio is resampled to the checkpoint's own
rate before the model sees it (``samplerate``, 24 kHz unless the config says otherwise).

Inputs are normalised per item to zero mean and unit variance, as MERT's feature extractor
(``Wav2Vec2FeatureExtractor(do_normalize=True)``) does.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trainables.errors import RankhouseError

# a tiny MERT-shaped model for tests and a scratch base on a CPU; a real MERT-v1-95M is
# hidden 768, 12 layers, 12 heads, intermediate 3072, conv_dim 512
MERT_DEFAULTS = {"samplerate": 24000, "hidden_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "intermediate_size": 192, "conv_dim": [32] * 7, "conv_stride": [5, 2, 2, 2, 2, 2, 2],
                 "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "num_conv_pos_embeddings": 32,
                 "num_conv_pos_embedding_groups": 4}
TARGETS = ["backbone.model.encoder.layers.*.attention.*_proj", "backbone.model.encoder.layers.*.feed_forward.*_dense"]


def hubert_fields() -> set[str]:
    from transformers import HubertConfig

    return set(HubertConfig().to_dict())


class MertBackbone(nn.Module):
    def __init__(self, samplerate: int = 24000, folder: str | None = None, **config):
        super().__init__()
        from transformers import HubertConfig, HubertModel

        unknown = sorted(set(config) - hubert_fields())
        if unknown:
            raise RankhouseError(f"model.kwargs: {', '.join(unknown)}: not a HuBERT config field")
        self.samplerate = int(samplerate)
        self.model = HubertModel(HubertConfig(**config)) if folder is None else load_folder(Path(folder))
        cfg = self.model.config
        self.hop = math.prod(cfg.conv_stride)
        # the encoder's receptive field minus its stride: padding that makes n samples n // hop frames
        field = 1
        for kernel, stride in zip(reversed(cfg.conv_kernel), reversed(cfg.conv_stride)):
            field = (field - 1) * stride + kernel
        self.pad = field - self.hop
        self.width = cfg.hidden_size

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        frames = audio.shape[-1] // self.hop
        x = audio.float()
        x = (x - x.mean(dim=-1, keepdim=True)) / (x.std(dim=-1, keepdim=True) + 1e-7)
        x = F.pad(x, (self.pad // 2, self.pad - self.pad // 2))
        return self.model(x).last_hidden_state[:, :frames]  # (B, frames, hidden)


def config_kwargs(backbone: MertBackbone) -> dict:
    """The JSON-able HuBERT config (and rate) that rebuilds ``backbone`` with no folder."""
    fields = hubert_fields() - {"model_type", "transformers_version", "architectures", "auto_map", "_name_or_path"}
    config = {k: v for k, v in backbone.model.config.to_dict().items() if k in fields}
    return {"samplerate": backbone.samplerate, **json.loads(json.dumps(config, default=str))}


def load_folder(folder: Path):
    """A MERT or HuBERT checkpoint folder as a ``HubertModel``; one error names the keys that do not map."""
    from transformers import HubertConfig, HubertModel

    config_file = folder / "config.json"
    if not config_file.is_file():
        raise RankhouseError(f"model.base: {folder}: no config.json; a MERT/HuBERT checkpoint folder holds "
                             "config.json and model.safetensors (or pytorch_model.bin)")
    raw = json.loads(config_file.read_text())
    if raw.get("feature_extractor_cqt"):
        raise RankhouseError(f"{config_file}: feature_extractor_cqt is on; that MERT variant adds a CQT input "
                             "HuBERT lacks (MERT-v1 models leave it off)")
    fields = hubert_fields()
    config = HubertConfig(**{k: v for k, v in raw.items() if k in fields and k not in ("model_type", "architectures",
                                                                                          "auto_map")})
    try:
        model, info = HubertModel.from_pretrained(str(folder), config=config, local_files_only=True,
                                                  output_loading_info=True, weights_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise RankhouseError(f"model.base: {folder}: cannot load its weights ({' '.join(str(exc).split())[:200]})"
                             ) from None
    missing = [k for k in info.get("missing_keys", []) if k != "masked_spec_embed"]
    unexpected = [k for k in info.get("unexpected_keys", [])]
    wrong = [str(k) for k in info.get("mismatched_keys", [])]
    if missing or unexpected or wrong:
        parts = [f"{label}: {', '.join(map(str, keys[:8]))}{' ...' if len(keys) > 8 else ''}"
                 for label, keys in (("missing", missing), ("not in HuBERT", unexpected), ("wrong shape", wrong))
                 if keys]
        raise RankhouseError(f"model.base: {folder}: its weights do not map onto HuBERT ({'; '.join(parts)})")
    return model.eval()
