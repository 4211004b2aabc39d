"""The structure family's ``mert`` backbone: a user's MERT/HuBERT checkpoint folder as the base,
without trust_remote_code, its attention and feed-forward layers as LoRA targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from trainables import lora
from trainables.errors import RankhouseError
from trainables.family import get_family
from trainables.structure.family import load_checkpoint, save_checkpoint
from trainables.structure.model import OUTPUTS


@pytest.fixture(scope="module")
def mert_folder(tmp_path_factory) -> Path:
    """A folder laid out as MERT-v1's on the hub: HuBERT weights, a config whose model_type
    and auto_map point at MERT's own code (which is never run)."""
    from transformers import HubertConfig, HubertModel

    folder = tmp_path_factory.mktemp("mert")
    torch.manual_seed(0)
    HubertModel(HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             conv_dim=[16] * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
                ).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="mert_model", auto_map={"AutoModel": "modeling_MERT.MERTModel"},
                  feature_extractor_cqt=False, sample_rate=24000)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_mert_folder_is_the_base_with_new_heads_that_train_fully(mert_folder):
    family = get_family("structure")
    base = family.build_base({"base": str(mert_folder)})
    assert (base.samplerate, base.hop) == (24000, 320)  # MERT's own rate: 75 frames a second
    model, heads = family.adapt(base, {})
    adapted, ranks = family.apply_lora(model, lora.LoraSpec(rank=4, alpha=8.0), heads)
    assert heads == ["head"] and "head" not in ranks
    assert {k.rsplit(".", 1)[-1] for k in ranks} == {"q_proj", "k_proj", "v_proj", "out_proj", "intermediate_dense",
                                                     "output_dense"}
    x = torch.randn(1, 24000 * 2 + 17)
    out = adapted(x)
    assert out.shape == (1, (24000 * 2 + 17) // 320, OUTPUTS) and torch.equal(out, base.model(x))
    again = family.build_base({"base": str(mert_folder)})
    assert torch.equal(again.model.head.weight, base.model.head.weight)  # the same new heads in every process
    assert again.identity["sha256"] == base.identity["sha256"]


def test_keys_that_do_not_map_are_named_in_one_error(mert_folder, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((mert_folder / "config.json").read_text())
    state = load_file(str(mert_folder / "model.safetensors"))
    state["encoder.layers.0.attention.qkv_fused.weight"] = state.pop("encoder.layers.0.attention.q_proj.weight")
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(RankhouseError) as err:
        get_family("structure").build_base({"base": str(bad)})
    message = str(err.value)
    assert "do not map onto HuBERT" in message and "encoder.layers.0.attention.q_proj.weight" in message
    assert "qkv_fused" in message and "\n" not in message


def test_a_folder_without_a_config_is_refused(tmp_path):
    with pytest.raises(RankhouseError, match="no config.json"):
        get_family("structure").build_base({"base": str(tmp_path)})


def test_a_mert_structure_model_saves_and_loads_without_its_folder(mert_folder, tmp_path):
    base = get_family("structure").build_base({"base": str(mert_folder)})
    save_checkpoint(base.model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    x = torch.randn(1, 24000)
    assert loaded.kind == "mert" and torch.equal(loaded.eval()(x), base.model(x))
