"""The BS-RoFormer / Mel-Band RoFormer family (trainables/bs_roformer.py) on its MSST-exact
models (trainables/roformer.py; equivalence with MSST's code: test_msst_equivalence.py): output
shape and length, LoRA targets from real module paths, step-0
equivalence, only adapters and new heads train, PEFT save/reload, source heads, checkpoints
(rankhouse safetensors and MSST state dicts, read safely)."""

from __future__ import annotations

import copy
import json
import re

import peft
import pytest
import torch
import yaml

from trainables import bs_roformer, lora
from trainables.errors import RankhouseError
from trainables.family import get_family

SOURCES = ["drums", "bass", "other", "vocals"]
SR = 22050
# the embedded architecture, shrunk: 512-point STFT (257 bins in 9 bands), width 16
TINY = {
    "bs_roformer": dict(dim=16, depth=1, stereo=True, num_stems=4, time_transformer_depth=1, freq_transformer_depth=1,
                        freqs_per_bands=[8] * 4 + [32] * 4 + [97], dim_head=8, heads=2, stft_n_fft=512, stft_hop_length=128, stft_win_length=512, mask_estimator_depth=1),
    "mel_band_roformer": dict(dim=16, depth=1, stereo=True, num_stems=4, time_transformer_depth=1,
                              freq_transformer_depth=1, linear_transformer_depth=1, num_bands=8, sample_rate=SR,
                              dim_head=8, heads=2, stft_n_fft=512, stft_hop_length=128,
                              stft_win_length=512, mask_estimator_depth=1),
}
ARCHS = list(TINY)


def tiny(arch="bs_roformer", seed=0, sources=SOURCES):
    torch.manual_seed(seed)
    model = bs_roformer.new_model(arch, {**TINY[arch], "num_stems": len(sources)})
    model.sources = list(sources)
    return model.eval().requires_grad_(False)


def tiny_base(arch="bs_roformer", seed=0):
    info = {"arch": arch, "kwargs": TINY[arch], "sources": SOURCES, "samplerate": SR, "segment": 1.0}
    return bs_roformer.BSRoformerFamily._base(tiny(arch, seed), info, {"name": "tiny", "sha256": None})


@pytest.fixture(scope="module")
def mix():
    g = torch.Generator().manual_seed(1)
    return 0.1 * torch.randn(2, 2, 7001, generator=g)  # an odd length: not a multiple of the hop


def randomize_adapters(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)


@pytest.mark.parametrize("arch", ARCHS)
def test_output_is_sources_channels_and_the_input_length(arch, mix):
    out = tiny(arch)(mix)
    assert out.shape == (2, 4, 2, mix.shape[-1])
    one = tiny(arch, sources=["vocals"])(mix)
    assert one.shape == (2, 1, 2, mix.shape[-1])  # MSST squeezes one stem; the family does not


@pytest.mark.parametrize("arch", ARCHS)
def test_the_last_input_samples_are_separated_not_padded(arch, mix):
    """MSST's Mel-Band RoFormer stops at the last whole hop; the family returns every input
    sample, and the tail of a chunk carries signal (overlap-add would otherwise fade to silence)."""
    out = tiny(arch)(mix)
    assert out[..., -64:].abs().sum() > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_default_targets_resolve_to_attention_and_feed_forward_of_every_block(arch):
    model = tiny(arch)
    ranks = lora.resolve_ranks(model, lora.LoraSpec(rank=4), default_targets=bs_roformer.BSRoformerFamily.default_targets)
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("layers.")]
    expected = [n for n in linear if n.endswith(("to_qkv", "to_qkv.0", "to_out.0", "to_out.1", "net.1", "net.4"))]
    assert sorted(ranks) == sorted(expected) and all(r == 4 for r in ranks.values())
    assert not [n for n in ranks if "to_gates" in n or "mask_estimators" in n or "band_split" in n]
    if arch == "mel_band_roformer":  # TINY gives it a linear-attention block: q/k/v and output named differently
        assert any(n.endswith("to_qkv.0") for n in ranks) and any(n.endswith("to_qkv") for n in ranks)


@pytest.mark.parametrize("arch", ARCHS)
def test_step0_output_equals_the_base_and_only_adapters_train(arch, mix):
    family = get_family("bs_roformer")
    model = tiny(arch)
    expected = model(mix)
    adapted, ranks = lora.apply(copy.deepcopy(model), lora.LoraSpec(rank=4, alpha=8.0), [], family.default_targets)
    assert torch.equal(adapted(mix), expected)
    trainable = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert lora.trainable_parameters(adapted) == sum(
        r * sum(lora.fan(dict(model.named_modules())[n])) for n, r in ranks.items())


def test_new_source_heads_start_from_their_parent_and_train_fully(mix):
    family, base = get_family("bs_roformer"), tiny_base()
    expected = base.model(mix)
    model, heads = family.adapt_sources(base, ["kick", "hihat", "bass", "other", "vocals"],
                                        {"kick": "drums", "hihat": "drums"})
    assert heads == ["mask_estimators.0", "mask_estimators.1"]
    assert model.sources == ["kick", "hihat", "bass", "other", "vocals"] and base.model.sources == SOURCES
    out = model(mix)
    for new, old in ((0, 0), (1, 0), (2, 1), (3, 2), (4, 3)):
        assert torch.equal(out[:, new], expected[:, old])
    adapted, _ = lora.apply(model, lora.LoraSpec(rank=4), heads, family.default_targets)
    assert torch.equal(adapted(mix), out)  # step 0 with the rebuilt heads too
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    fully = {n for n in trainable if "lora_" not in n}
    # only the new sources' estimators train whole; the shared sources' stay frozen, exactly the base's
    assert fully and all(re.search(r"mask_estimators\.[01]\.modules_to_save\.", n) for n in fully)
    assert sum(p.numel() for n, p in adapted.named_parameters() if n in fully) == \
        2 * sum(p.numel() for p in base.model.mask_estimators[0].parameters())


def test_adapt_sources_errors():
    family, base = get_family("bs_roformer"), tiny_base()
    with pytest.raises(RankhouseError, match=r"'kick' is not a source of the base .* model.parents.kick"):
        family.adapt_sources(base, ["kick", "bass"], {})
    with pytest.raises(RankhouseError, match="model.parents.kick: 'piano' is not a source"):
        family.adapt_sources(base, ["kick"], {"kick": "piano"})


def test_vocals_only_keeps_the_vocals_estimator_exactly(mix):
    family, base = get_family("bs_roformer"), tiny_base()
    model, heads = family.adapt_sources(base, ["vocals"], {})
    assert heads == [] and torch.equal(model(mix)[:, 0], base.model(mix)[:, 3])


@pytest.mark.parametrize("arch", ARCHS)
def test_adapter_saves_as_peft_safetensors_and_reloads_identically(arch, mix, tmp_path):
    family = get_family("bs_roformer")
    adapted, _ = lora.apply(tiny(arch), lora.LoraSpec(rank=4), [], family.default_targets)
    randomize_adapters(adapted)
    out = adapted(mix)
    assert not torch.equal(out, tiny(arch)(mix))
    lora.save(adapted, tmp_path)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in tmp_path.iterdir()}
    reloaded = lora.load(tiny(arch), tmp_path)
    saved = {k: v for k, v in adapted.state_dict().items() if "lora_" in k}
    assert saved and all(torch.equal(reloaded.state_dict()[k], v) for k, v in saved.items())
    # bit-identical weights; Mel-Band RoFormer's output agrees to float rounding (7.5e-8 measured)
    same = torch.equal if arch == "bs_roformer" else lambda a, b: torch.allclose(a, b, rtol=0, atol=1e-6)
    assert same(reloaded(mix), out)
    plain = peft.PeftModel.from_pretrained(tiny(arch), str(tmp_path), config=lora.load_config(tmp_path))
    assert same(plain(mix), out)


# --- bases and checkpoints ------------------------------------------------------------------------

def test_rankhouse_checkpoint_roundtrip_shares_no_storage_and_reports_identity(mix, tmp_path):
    model = tiny()
    path = tmp_path / "base.safetensors"
    # MSST shares one rotary table per axis between layers: safetensors refuses shared
    # storage, so the checkpoint writes copies
    digest = bs_roformer.save_checkpoint(model, path, "bs_roformer", TINY["bs_roformer"], SOURCES, SR, 1.0)
    base = get_family("bs_roformer").build_base({"base": str(path)})
    assert base.identity == {"name": str(path), "sha256": digest}
    assert base.sources == SOURCES and base.samplerate == SR and base.segment == 1.0
    assert torch.equal(base.model(mix), model(mix))


def test_a_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"family": "htdemucs"})
    with pytest.raises(RankhouseError, match="not a rankhouse BS-RoFormer checkpoint"):
        get_family("bs_roformer").build_base({"base": str(path)})


def test_a_checkpoint_of_the_package_layout_is_refused_with_the_way_out(tmp_path):
    """Bases and merged models written before the family computed what MSST computes."""
    path = tmp_path / "old.safetensors"
    state = {k.replace("layers.0.0.layers.0.0.", "layers.0.0.layers.0.0.branch."): v.clone()
             for k, v in tiny().state_dict().items()}
    from safetensors.torch import save_file

    save_file(state, str(path), metadata={"family": "bs_roformer", "arch": "bs_roformer",
                                           "kwargs": json.dumps(TINY["bs_roformer"]), "sources": json.dumps(SOURCES),
                                           "samplerate": str(SR), "segment": "1.0"})
    with pytest.raises(RankhouseError, match="bs-roformer package's modules.*platform.base --init"):
        get_family("bs_roformer").build_base({"base": str(path)})


def test_base_errors(tmp_path):
    family = get_family("bs_roformer")
    with pytest.raises(RankhouseError, match="no pretrained names"):
        family.build_base({"base": "bs_roformer_viperx"})
    with pytest.raises(RankhouseError, match="no such file"):
        family.build_base({"base": str(tmp_path / "missing.ckpt")})
    (tmp_path / "model.ckpt").write_bytes(b"")
    with pytest.raises(RankhouseError, match="set model.config to the MSST config YAML"):
        family.build_base({"base": str(tmp_path / "model.ckpt")})


def test_embedded_missing_says_how_to_build_it(monkeypatch, tmp_path):
    monkeypatch.setattr(bs_roformer.BSRoformerFamily, "embedded", tmp_path / "absent.safetensors")
    with pytest.raises(RankhouseError, match="platform.base --family bs_roformer"):
        get_family("bs_roformer").build_base({"base": "embedded"})


def msst_files(tmp_path, model, arch="bs_roformer", sources=SOURCES, **extra):
    """An MSST checkpoint (a bare state dict, MSST's key names) and its config YAML."""
    ckpt = tmp_path / "model_bs_roformer.ckpt"
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, ckpt)
    # MSST writes tuples as !!python/tuple, and options that only choose kernels
    text = yaml.safe_dump({"audio": {"chunk_size": SR * 2, "sample_rate": SR},
                           "model": {**TINY[arch], "flash_attn": True, "use_torch_checkpoint": False, **extra},
                           "training": {"instruments": sources, "target_instrument": None}})
    text = text.replace("freqs_per_bands:\n", "freqs_per_bands: !!python/tuple\n")
    config = tmp_path / "config.yaml"
    config.write_text(text)
    return ckpt, config


@pytest.mark.parametrize("arch", ARCHS)
def test_an_msst_checkpoint_loads_and_separates_identically(arch, mix, tmp_path):
    model = tiny(arch, seed=3)
    ckpt, config = msst_files(tmp_path, model, arch=arch)
    base = get_family("bs_roformer").build_base({"base": str(ckpt), "config": str(config)})
    assert base.config["arch"] == arch
    assert base.sources == SOURCES and base.samplerate == SR and base.segment == 2.0
    assert torch.equal(base.model(mix), model(mix))


def test_an_msst_base_identity_covers_checkpoint_and_config(tmp_path):
    from trainables.checkpoint import sha256

    ckpt, config = msst_files(tmp_path, tiny())
    family = get_family("bs_roformer")
    first = family.build_base({"base": str(ckpt), "config": str(config)}).identity
    assert first["sha256"] != sha256(ckpt) and first["config"] == str(config)
    cfg = yaml.safe_load(config.read_text().replace("!!python/tuple", ""))
    cfg["training"]["instruments"] = ["vocals", "drums", "bass", "other"]  # same weights, other stem order
    config.write_text(yaml.safe_dump(cfg))
    assert family.build_base({"base": str(ckpt), "config": str(config)}).identity["sha256"] != first["sha256"]


@pytest.mark.parametrize("change, message", [
    (lambda c: c["model"].update(freqs_per_bands=[8] * 4), r"cannot build this bs_roformer \(freqs_per_bands: 4 bands"),
    (lambda c: c["model"].pop("dim"), r"cannot build this bs_roformer \(.*'dim'"),
    (lambda c: c.update(model=[1, 2]), "expected MSST's model:, audio.sample_rate and training.instruments"),
    (lambda c: c["training"].update(instruments="vocals"), "expected MSST's model:"),
])
def test_a_broken_msst_config_is_one_line_naming_it(change, message, tmp_path):
    ckpt, config = msst_files(tmp_path, tiny())
    cfg = yaml.safe_load(config.read_text().replace("!!python/tuple", ""))
    change(cfg)
    config.write_text(yaml.safe_dump(cfg))
    with pytest.raises(RankhouseError, match=message) as err:
        get_family("bs_roformer").build_base({"base": str(ckpt), "config": str(config)})
    assert f"model.config: {config}" in str(err.value)


def test_an_msst_target_instrument_model_has_one_source(tmp_path):
    ckpt, config = msst_files(tmp_path, tiny(sources=["vocals"]), sources=SOURCES)
    cfg = yaml.safe_load(config.read_text().replace("!!python/tuple", ""))
    cfg["training"]["target_instrument"] = "vocals"
    config.write_text(yaml.safe_dump(cfg))
    base = get_family("bs_roformer").build_base({"base": str(ckpt), "config": str(config)})
    assert base.sources == ["vocals"]


def test_an_msst_checkpoint_of_another_architecture_names_the_keys(tmp_path):
    ckpt, config = msst_files(tmp_path, tiny())
    cfg = yaml.safe_load(config.read_text().replace("!!python/tuple", ""))
    cfg["model"]["dim"] = 24
    config.write_text(yaml.safe_dump(cfg))
    with pytest.raises(RankhouseError, match=r"does not fit the architecture of model.config \(wrong shape: "):
        get_family("bs_roformer").build_base({"base": str(ckpt), "config": str(config)})


def test_an_option_msst_does_not_have_is_refused_by_name(tmp_path):
    ckpt, config = msst_files(tmp_path, tiny(), num_residual_streams=1)
    with pytest.raises(RankhouseError, match="num_residual_streams: not an option of MSST's BSRoformer"):
        get_family("bs_roformer").build_base({"base": str(ckpt), "config": str(config)})


@pytest.mark.parametrize("arch", ARCHS)
def test_msst_skip_connections_and_linear_attention_build_and_load(arch, mix, tmp_path):
    """Options the bs-roformer package could not build: MSST's own models have them."""
    torch.manual_seed(5)
    kwargs = {**TINY[arch], "depth": 2, "linear_transformer_depth": 1, "skip_connection": True}
    model = bs_roformer.new_model(arch, kwargs).eval()
    assert len(model.layers[0]) == 3
    ckpt, config = msst_files(tmp_path, model, arch=arch, depth=2, linear_transformer_depth=1, skip_connection=True)
    base = get_family("bs_roformer").build_base({"base": str(ckpt), "config": str(config)})
    assert torch.equal(base.model(mix), model(mix))
    no_skip = bs_roformer.new_model(arch, {**kwargs, "skip_connection": False}).eval()
    no_skip.load_state_dict(model.state_dict())
    assert not torch.allclose(no_skip(mix), model(mix))


def test_an_msst_checkpoint_is_never_unpickled(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    ckpt, config = msst_files(tmp_path, tiny())
    torch.save({"state_dict": Payload()}, ckpt)
    with pytest.raises(RankhouseError, match="cannot be read safely"):
        get_family("bs_roformer").build_base({"base": str(ckpt), "config": str(config)})


def test_msst_options_that_only_choose_kernels_or_the_loss_are_accepted(tmp_path):
    ckpt, config = msst_files(tmp_path, tiny(), sage_attention=False, dim_freqs_in=257, multi_stft_hop_size=147,
                              multi_stft_resolution_loss_weight=1.0, match_input_audio_length=True)
    assert get_family("bs_roformer").build_base({"base": str(ckpt), "config": str(config)}).sources == SOURCES


@pytest.mark.parametrize("arch", ARCHS)
def test_msst_mask_estimator_width_is_honoured(arch, mix):
    model = bs_roformer.new_model(arch, {**TINY[arch], "mask_estimator_depth": 2, "mlp_expansion_factor": 2})
    hidden = model.mask_estimators[0].to_freqs[0][0][0]
    assert hidden.out_features == 2 * TINY[arch]["dim"]
    assert model(mix).shape == (2, 4, 2, mix.shape[-1])
