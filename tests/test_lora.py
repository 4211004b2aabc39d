"""LoRA through PEFT on real module paths (trainables/lora.py), proven on a tiny HT-Demucs.

What rankhouse's LoRA promises and these tests check: step-0 equality for every
layer type HT-Demucs has, only adapters (+ declared modules_to_save) train, exact ConvTranspose
merging, PEFT-format save/reload with overlapping per-layer ranks, explicit scaling, and
one-line errors for every spec mistake.
"""

from __future__ import annotations

import json
import re

import peft
import pytest
import torch
from torch import nn

from trainables import lora
from trainables.errors import RankhouseError
from trainables.lora_layers import DilationKept, LoraConvTranspose

pytestmark = pytest.mark.usefixtures("one_thread")

GROUPS = {
    "encoder.*.conv": nn.Conv2d,
    "tencoder.*.conv": nn.Conv1d,
    "decoder.*.conv_tr": nn.ConvTranspose2d,
    "tdecoder.*.conv_tr": nn.ConvTranspose1d,
    "crosstransformer.*": (nn.MultiheadAttention, nn.Linear),
    "*.rewrite": (nn.Conv1d, nn.Conv2d),
}


def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def adapted_layers(peft_model) -> dict[str, nn.Module]:
    """Real module path -> PEFT LoRA layer (the prefix PEFT adds stripped)."""
    prefix = "base_model.model."
    # (PEFT's MultiheadAttention layer nests a LoRA layer for its out_proj under base_layer: skipped)
    return {n[len(prefix):]: m for n, m in peft_model.named_modules()
            if isinstance(m, peft.tuners.lora.LoraLayer) and n.startswith(prefix) and ".base_layer." not in n
            and "default" in m.lora_A}


def randomize_adapters(peft_model, seed: int = 1, std: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


# --- step 0 ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("pattern", list(GROUPS))
def test_step0_output_equals_base(pattern, make_tiny, tiny_mix):
    ref = forward(make_tiny(), tiny_mix)
    model, ranks = lora.apply(make_tiny(), lora.LoraSpec(rank=2, targets=[pattern]))
    layers = adapted_layers(model)
    assert set(layers) == set(ranks) and ranks  # every resolved module really got a LoRA layer
    assert all(isinstance(m.get_base_layer(), GROUPS[pattern]) for m in layers.values())
    out = forward(model, tiny_mix)
    assert torch.equal(out, ref)


def test_step0_all_default_targets_together(make_tiny, tiny_mix):
    from trainables.htdemucs import HTDemucsFamily

    ref = forward(make_tiny(), tiny_mix)
    model, ranks = lora.apply(make_tiny(), lora.LoraSpec(rank=2), default_targets=HTDemucsFamily.default_targets)
    assert len(ranks) == len(adapted_layers(model))
    assert torch.equal(forward(model, tiny_mix), ref)


def test_adapters_change_the_output_once_trained(make_tiny, tiny_mix):
    """The equality above is not vacuous: non-zero B weights move every group's output. (The
    transformer's residual branches go through LayerScale, ~1e-4 at init: hence the large std.)"""
    ref = forward(make_tiny(), tiny_mix)
    for pattern in GROUPS:
        model, _ = lora.apply(make_tiny(), lora.LoraSpec(rank=2, targets=[pattern]))
        randomize_adapters(model, std=1.0)
        out = forward(model, tiny_mix)
        assert torch.isfinite(out).all() and (out - ref).abs().max() > 1e-4, pattern


# --- what trains -----------------------------------------------------------------------------------

def test_only_adapters_train(make_tiny):
    model, ranks = lora.apply(make_tiny(), lora.LoraSpec(rank=2, targets=list(GROUPS)))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    # every adapter parameter trains, and the count is what trainable_parameters reports
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)
    assert lora.trainable_parameters(model) == sum(p.numel() for p in trainable.values())
    # the adapters are small next to the base
    base_total = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    assert 0 < lora.trainable_parameters(model) < base_total


def test_modules_to_save_train_fully_and_are_not_adapted(make_tiny, tiny_mix):
    heads = ["decoder.3.conv_tr", "tdecoder.3.conv_tr"]
    head_params = sum(p.numel() for h in heads for p in make_tiny().get_submodule(h).parameters())
    model, ranks = lora.apply(make_tiny(), lora.LoraSpec(rank=2, targets=["decoder.*.conv_tr", "tdecoder.*.conv_tr"]),
                              modules_to_save=heads)
    assert not set(heads) & set(ranks)  # a fully trained head gets no adapter on top
    lora_params, saved = 0, 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if "lora_" in name:
            lora_params += p.numel()
        else:
            assert ".modules_to_save." in name and any(f".{h}." in name for h in heads), name
            saved += p.numel()
    assert saved == head_params
    assert lora.trainable_parameters(model) == lora_params + head_params
    assert torch.equal(forward(model, tiny_mix), forward(make_tiny(), tiny_mix))


def test_modules_to_save_is_exactly_what_was_declared(make_tiny):
    """PEFT matches modules_to_save by suffix: ``decoder.3.conv_tr`` would also train
    ``tdecoder.3.conv_tr``. The ambiguous name is refused; declaring both trains both, no more."""
    with pytest.raises(RankhouseError, match="'decoder.3.conv_tr' is also the suffix of 'tdecoder.3.conv_tr'"):
        lora.apply(make_tiny(), lora.LoraSpec(rank=2, targets=["encoder.*.conv"]), modules_to_save=["decoder.3.conv_tr"])
    model, _ = lora.apply(make_tiny(), lora.LoraSpec(rank=2, targets=["encoder.*.conv"]),
                          modules_to_save=["decoder.3.conv_tr", "tdecoder.3.conv_tr"])
    full = {n.split(".modules_to_save.")[0].split("base_model.model.")[-1]
            for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}
    assert full == {"decoder.3.conv_tr", "tdecoder.3.conv_tr"}


# --- rankhouse's own LoRA layers: ConvTranspose, dilated Conv -------------------------------------

STANDALONE = {
    "ConvTranspose1d": (lambda: nn.ConvTranspose1d(6, 5, 8, stride=4, padding=2), (2, 6, 13)),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(6, 5, (8, 3), stride=(4, 2), padding=(2, 1),
                                                   output_padding=(1, 1)), (2, 6, 7, 9)),
    # PEFT's own Conv LoRA drops the dilation: a shape error here, a wrong merge where shapes agree
    "Conv1d": (lambda: nn.Conv1d(6, 5, 3, padding=4, dilation=4), (2, 6, 30)),
    "Conv2d": (lambda: nn.Conv2d(6, 5, 3, padding=(2, 1), dilation=(2, 1)), (2, 6, 9, 11)),
}


@pytest.mark.parametrize("kind", list(STANDALONE))
def test_own_lora_layers_merge_exactly(kind):
    make, shape = STANDALONE[kind]
    torch.manual_seed(0)
    base = nn.Sequential(make()).eval().requires_grad_(False)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    ref = forward(base, x).clone()
    model, ranks = lora.apply(base, lora.LoraSpec(rank=3, alpha=5.0, targets=["0"]))
    layer = adapted_layers(model)["0"]
    assert isinstance(layer, LoraConvTranspose if kind.startswith("ConvTranspose") else DilationKept)
    assert torch.equal(forward(model, x), ref)
    with torch.no_grad():
        layer.lora_B["default"].weight.copy_(torch.randn(layer.lora_B["default"].weight.shape,
                                                         generator=torch.Generator().manual_seed(3)))
    adapted = forward(model, x)
    assert adapted.shape == ref.shape
    assert (adapted - ref).abs().max() > 1e-2
    merged = model.merge_and_unload()
    assert type(merged[0]).__name__ == kind  # back to the plain layer, adapter folded in
    torch.testing.assert_close(forward(merged, x), adapted, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pattern", ["decoder.*.conv_tr", "tdecoder.*.conv_tr"])
def test_conv_transpose_lora_merges_exactly_in_htdemucs(pattern, make_tiny, tiny_mix):
    ref = forward(make_tiny(), tiny_mix)
    model, _ = lora.apply(make_tiny(), lora.LoraSpec(rank=2, alpha=4.0, targets=[pattern]))
    randomize_adapters(model, std=0.1)
    adapted = forward(model, tiny_mix)
    assert (adapted - ref).abs().max() > 1e-3
    merged = model.merge_and_unload()
    assert not any(isinstance(m, peft.tuners.lora.LoraLayer) for m in merged.modules())
    torch.testing.assert_close(forward(merged, tiny_mix), adapted, atol=1e-5, rtol=0)


# --- save / reload ---------------------------------------------------------------------------------

SAVE_SPEC = dict(rank=2, targets=["encoder.*.conv", "tencoder.*.rewrite", "decoder.*.conv_tr", "tdecoder.*.conv_tr",
                                  "crosstransformer.*"])


def test_save_writes_peft_format_without_pickles(make_tiny, tmp_path):
    model, _ = lora.apply(make_tiny(), lora.LoraSpec(**SAVE_SPEC))
    folder = lora.save(model, tmp_path / "adapter")
    names = {p.name for p in folder.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".th", ".ckpt"))]
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "adapter_model.safetensors"))
    assert tensors and all("lora_" in k for k in tensors)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"


def test_save_reload_gives_identical_outputs(make_tiny, tiny_mix, tmp_path):
    model, _ = lora.apply(make_tiny(), lora.LoraSpec(**SAVE_SPEC))
    randomize_adapters(model)
    out = forward(model, tiny_mix)
    assert not torch.equal(out, forward(make_tiny(), tiny_mix))
    lora.save(model, tmp_path)

    reloaded = lora.load(make_tiny(), tmp_path)
    assert torch.equal(forward(reloaded, tiny_mix), out)
    assert lora.trainable_parameters(reloaded) == 0  # inference by default
    assert lora.trainable_parameters(lora.load(make_tiny(), tmp_path, trainable=True)) == \
        lora.trainable_parameters(model)

    plain = peft.PeftModel.from_pretrained(make_tiny(), str(tmp_path), config=lora.load_config(tmp_path))
    assert torch.equal(forward(plain, tiny_mix), out)


def test_load_weights_resumes_into_a_fresh_adapter(make_tiny, tiny_mix, tmp_path):
    model, _ = lora.apply(make_tiny(), lora.LoraSpec(**SAVE_SPEC))
    randomize_adapters(model)
    lora.save(model, tmp_path)
    fresh, _ = lora.apply(make_tiny(), lora.LoraSpec(**SAVE_SPEC))
    lora.load_weights(fresh, tmp_path)
    assert torch.equal(forward(fresh, tiny_mix), forward(model, tiny_mix))


def test_load_config_refuses_a_folder_that_is_not_an_adapter(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(RankhouseError, match="not a PEFT adapter"):
        lora.load_config(tmp_path)


# --- layer_ranks -----------------------------------------------------------------------------------

def test_layer_ranks_first_match_wins_and_rank0_removes(make_tiny):
    spec = lora.LoraSpec(rank=2, targets=["encoder.*.conv", "encoder.*.rewrite", "tdecoder.*.conv_tr"],
                         layer_ranks={"encoder.0.*": 8, "encoder.*": 4, "tdecoder.1.*": 0, "tdecoder.*": 3})
    ranks = lora.resolve_ranks(make_tiny(), spec)
    assert ranks == {
        "encoder.0.conv": 8, "encoder.0.rewrite": 8,
        **{f"encoder.{i}.{k}": 4 for i in (1, 2, 3) for k in ("conv", "rewrite")},
        "tdecoder.0.conv_tr": 3, "tdecoder.2.conv_tr": 3, "tdecoder.3.conv_tr": 3,
    }
    # order matters: the broad pattern first shadows the specific one
    spec.layer_ranks = {"encoder.*": 4, "encoder.0.*": 8}
    ranks = lora.resolve_ranks(make_tiny(), spec)
    assert ranks["encoder.0.conv"] == 4 and ranks["tdecoder.1.conv_tr"] == 2  # unmatched: spec.rank
    model, applied = lora.apply(make_tiny(), spec)
    assert "tdecoder.1.conv_tr" in adapted_layers(model)


def test_overlapping_layer_ranks_reload_with_the_right_shapes(make_tiny, tiny_mix, tmp_path):
    spec = lora.LoraSpec(rank=2, targets=["encoder.*.conv", "encoder.*.rewrite", "tencoder.*.conv",
                                          "decoder.*.conv_tr", "crosstransformer.*"],
                         layer_ranks={"encoder.0.*": 8, "encoder.*": 2, "decoder.0.*": 4, "decoder.*": 3,
                                      "crosstransformer.layers.0.*": 4, "crosstransformer.layers_t.1.*": 0})
    model, ranks = lora.apply(make_tiny(), spec)
    assert ranks["encoder.0.conv"] == 8 and ranks["encoder.1.conv"] == 2 and ranks["decoder.0.conv_tr"] == 4
    assert ranks["decoder.1.conv_tr"] == 3 and ranks["tencoder.0.conv"] == 2
    assert not any(n.startswith("crosstransformer.layers_t.1.") for n in ranks)
    randomize_adapters(model)
    out = forward(model, tiny_mix)
    lora.save(model, tmp_path)

    reloaded = lora.load(make_tiny(), tmp_path)
    layers = adapted_layers(reloaded)
    assert set(layers) == set(ranks)  # rank-0 modules stay unadapted
    for name, r in ranks.items():
        layer = layers[name]
        assert layer.r["default"] == r, name
        a = layer.lora_A["default"].weight
        # Linear/Conv: A is (r, in, ...); ConvTranspose: (in, r, ...); MHA: A of in_proj is (r, embed)
        r_dim = 1 if isinstance(layer, LoraConvTranspose) else 0
        assert a.shape[r_dim] == r, (name, tuple(a.shape))
    assert torch.equal(forward(reloaded, tiny_mix), out)


def test_lora_config_keys_are_exact_and_disjoint(make_tiny):
    spec = lora.LoraSpec(rank=2, targets=["encoder.*.conv", "tencoder.*.conv"], layer_ranks={"encoder.0.*": 4,
                                                                                             "tencoder.0.*": 8})
    ranks = lora.resolve_ranks(make_tiny(), spec)
    config = lora.lora_config(ranks, spec)
    assert config.r == 2
    assert sorted(config.target_modules) == sorted(ranks)
    # PEFT matches pattern keys as (.*\.)?key$: "encoder.0.conv" must not also catch "tencoder.0.conv"
    for key, r in config.rank_pattern.items():
        hits = [n for n in ranks if re.match(rf"(.*\.)?({key})$", n)]
        assert len(hits) == 1 and ranks[hits[0]] == r


# --- errors ----------------------------------------------------------------------------------------

def test_layer_ranks_pattern_matching_nothing_names_close_matches(make_tiny):
    spec = lora.LoraSpec(rank=2, targets=["encoder.*.conv"], layer_ranks={"encodr.0.*": 4})
    with pytest.raises(RankhouseError, match=r"lora\.layer_ranks: pattern 'encodr\.0\.\*' matches no") as err:
        lora.resolve_ranks(make_tiny(), spec)
    assert "close matches: encoder.0.conv" in str(err.value)
    assert "\n" not in str(err.value)


def test_layer_ranks_pattern_outside_the_targets_is_an_error(make_tiny):
    # decoder layers exist, but are not targeted: a rank for them would silently do nothing
    spec = lora.LoraSpec(rank=2, targets=["encoder.*.conv"], layer_ranks={"decoder.*": 4})
    with pytest.raises(RankhouseError, match=r"lora\.layer_ranks: pattern 'decoder\.\*'"):
        lora.resolve_ranks(make_tiny(), spec)


def test_target_pattern_matching_nothing(make_tiny):
    with pytest.raises(RankhouseError, match=r"lora\.targets: pattern 'encoder\.\*\.convv' matches no") as err:
        lora.apply(make_tiny(), lora.LoraSpec(targets=["encoder.*.conv", "encoder.*.convv"]))
    assert "close matches" in str(err.value)
    # a real module that LoRA cannot adapt (an HEncLayer container) is "nothing" too
    with pytest.raises(RankhouseError, match="lora.targets: pattern 'encoder.0' matches no"):
        lora.resolve_ranks(make_tiny(), lora.LoraSpec(targets=["encoder.0"]))


def test_rank_above_fan_is_an_error_naming_the_module(make_tiny):
    with pytest.raises(RankhouseError, match=r"rank 8 for encoder\.0\.dconv\.layers\.0\.0 exceeds "
                                             r"min\(fan_in, fan_out\) = 1"):
        lora.resolve_ranks(make_tiny(), lora.LoraSpec(rank=8, targets=["encoder.*.dconv.*"]))
    # the same check through layer_ranks, on a ConvTranspose: tdecoder.3.conv_tr emits 4 sources x 2 channels
    spec = lora.LoraSpec(rank=2, targets=["tdecoder.*.conv_tr"], layer_ranks={"tdecoder.3.*": 9})
    with pytest.raises(RankhouseError, match=r"rank 9 for tdecoder\.3\.conv_tr exceeds .* = 8 \(ConvTranspose1d"):
        lora.resolve_ranks(make_tiny(), spec)
    # rank == min(fan_in, fan_out) is fine
    spec.layer_ranks = {"tdecoder.3.*": 8}
    assert lora.resolve_ranks(make_tiny(), spec)["tdecoder.3.conv_tr"] == 8


def test_fan_of_each_layer_type():
    assert lora.fan(nn.Linear(3, 7)) == (3, 7)
    assert lora.fan(nn.Conv1d(4, 6, 5)) == (20, 6)
    assert lora.fan(nn.Conv2d(4, 6, (3, 2), groups=2)) == (12, 6)
    assert lora.fan(nn.ConvTranspose1d(4, 6, 8, stride=4)) == (32, 6)
    assert lora.fan(nn.ConvTranspose2d(4, 6, (8, 1), stride=(4, 1))) == (32, 6)
    assert lora.fan(nn.MultiheadAttention(16, 2)) == (16, 16)


def test_all_ranks_zero_is_an_error(make_tiny):
    spec = lora.LoraSpec(rank=2, targets=["encoder.*.conv"], layer_ranks={"encoder.*": 0})
    with pytest.raises(RankhouseError, match="no module gets an adapter"):
        lora.apply(make_tiny(), spec)


def test_negative_layer_rank_is_an_error():
    with pytest.raises(RankhouseError, match=r"lora\.layer_ranks\.encoder\.1\.\*: -1; expected an integer rank >= 0"):
        lora.LoraSpec(rank=2, targets=["encoder.*.conv"], layer_ranks={"encoder.1.*": -1})


@pytest.mark.parametrize("cfg, message", [
    ({"scaling": "sqrt"}, r"lora\.scaling: 'sqrt'; expected standard \(alpha/r\) or rslora"),
    ({"rnk": 4}, r"lora\.rnk: unknown key; expected one of rank, alpha"),
    ({"rank": 0}, r"lora\.rank: 0; expected an integer rank >= 1"),
    ({"rank": "4"}, r"lora\.rank: expected an integer, got '4'"),
    ({"alpha": 0.0}, r"lora\.alpha: 0\.0; expected alpha > 0"),
    ({"dropout": 1.0}, r"lora\.dropout: 1\.0"),
    ({"layer_ranks": {"encoder.0.*": "2"}}, r"lora\.layer_ranks\.encoder\.0\.\*: '2'; expected an integer rank"),
])
def test_spec_errors(cfg, message):
    with pytest.raises(RankhouseError, match=message):
        lora.LoraSpec.from_config(cfg)


def test_spec_from_config_fills_the_schemas_defaults():
    spec = lora.LoraSpec.from_config({"rank": 4, "alpha": 8, "targets": ["encoder.*"], "layer_ranks": {"encoder.0.*": 2}})
    assert (spec.rank, spec.alpha, spec.targets, spec.layer_ranks) == (4, 8.0, ["encoder.*"], {"encoder.0.*": 2})
    assert isinstance(spec.alpha, float)
    assert (spec.dropout, spec.scaling, spec.rank_mode, spec.gradient_at) == (0.0, "standard", "custom", 0.5)


def test_an_unknown_rank_mode_is_refused_not_ignored():
    with pytest.raises(RankhouseError, match=r"lora.rank_mode: 'adalora'; expected custom \(rank \+ layer_ranks\), "
                                             r"uniform \(one rank\), heuristic"):
        lora.LoraSpec.from_config({"rank": 4, "rank_mode": "adalora"})


# --- MultiheadAttention, scaling -------------------------------------------------------------------

def test_attention_out_proj_is_never_offered(make_tiny):
    model = make_tiny()
    offered = lora.adaptable_modules(model)
    attn = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    assert attn and all(a in offered for a in attn)
    assert not [n for n in offered if n.endswith("out_proj")]
    assert not [n for n in offered if any(n.startswith(a + ".") for a in attn)]
    with pytest.raises(RankhouseError, match="lora.targets: pattern .*out_proj.* matches no"):
        lora.resolve_ranks(model, lora.LoraSpec(targets=["crosstransformer.layers.0.self_attn.out_proj"]))
    # a broad pattern picks the attention module itself, never its out_proj
    ranks = lora.resolve_ranks(model, lora.LoraSpec(rank=2, targets=["crosstransformer.*attn*"]))
    assert sorted(ranks) == sorted(attn)


@pytest.mark.parametrize("scaling", ["standard", "rslora"])
def test_scaling_is_explicit(scaling, make_tiny):
    spec = lora.LoraSpec.from_config({"rank": 4, "alpha": 8.0, "scaling": scaling,
                                      "targets": ["encoder.0.conv", "decoder.0.conv_tr", "tdecoder.0.conv_tr",
                                                  "crosstransformer.layers.0.*"]})
    model, ranks = lora.apply(make_tiny(), spec)
    expected = 8.0 / (4 ** 0.5 if scaling == "rslora" else 4)
    layers = adapted_layers(model)
    assert set(layers) == set(ranks)
    assert {type(layer.get_base_layer()) for layer in layers.values()} == {
        nn.Conv2d, nn.ConvTranspose2d, nn.ConvTranspose1d, nn.MultiheadAttention, nn.Linear}
    for name, layer in layers.items():
        assert layer.scaling["default"] == pytest.approx(expected), name
    assert model.peft_config["default"].use_rslora is (scaling == "rslora")
