"""``lora.rank_mode`` (trainables/lora.py and each family's ``rank_scales``): uniform, heuristic
and custom each produce the rank map they document on real models, keep step-0 equivalence and
train only adapters plus the rebuilt heads; search spaces refuse per-layer ranks a mode ignores."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from platform import spaces
from trainables import lora
from trainables.errors import RankhouseError
from trainables.family import get_family

HTDEMUCS = get_family("htdemucs")
ROFORMER = get_family("bs_roformer")


def ranks_of(model, family, **spec):
    return lora.resolve_ranks(model, lora.LoraSpec(**spec), default_targets=family.default_targets,
                              rank_scales=family.rank_scales)


def test_uniform_gives_every_target_the_one_rank(make_tiny):
    ranks = ranks_of(make_tiny(), HTDEMUCS, rank=4, rank_mode="uniform")
    assert ranks and set(ranks.values()) == {4}
    assert {n.split(".")[0] for n in ranks} == {"encoder", "tencoder", "decoder", "tdecoder", "crosstransformer"}


def test_uniform_and_heuristic_refuse_layer_ranks():
    for mode in ("uniform", "heuristic"):
        with pytest.raises(RankhouseError, match=f"rank_mode {mode} sets every layer's rank itself"):
            lora.LoraSpec.from_config({"rank_mode": mode, "layer_ranks": {"encoder.*": 4}})
    with pytest.raises(RankhouseError, match=r"lora.rank_mode: 'adaptive'; expected custom \(rank \+ layer_ranks\), uniform"):
        lora.LoraSpec.from_config({"rank_mode": "adaptive"})


def test_custom_is_rank_with_layer_ranks_overrides(make_tiny):
    ranks = ranks_of(make_tiny(), HTDEMUCS, rank=4, layer_ranks={"encoder.0.*": 8, "tdecoder.*": 0})
    assert ranks["encoder.0.conv"] == 8 and ranks["encoder.1.conv"] == 4
    assert not [n for n in ranks if n.startswith("tdecoder.")]


def test_htdemucs_heuristic_favours_first_encoders_and_the_transformer(make_tiny):
    model = make_tiny()
    ranks = ranks_of(model, HTDEMUCS, rank=8, rank_mode="heuristic")
    fan = {n: min(lora.fan(m)) for n, m in model.named_modules() if n in ranks}
    # encoders x2 -> x1 over depth 4, decoders x1 -> x0.5, transformer x2; clamped to each layer's fan
    expected = {"encoder.0.conv": 16, "encoder.1.conv": round(8 * (2 - 1 / 3)), "encoder.3.conv": 8,
                "tencoder.0.conv": 16, "decoder.0.conv_tr": 8, "decoder.3.conv_tr": 4, "tdecoder.3.conv_tr": 4}
    for name, rank in expected.items():
        assert ranks[name] == min(rank, fan[name]), name
    transformer = {n: r for n, r in ranks.items() if n.startswith("crosstransformer.")}
    assert transformer and all(r == min(16, fan[n]) for n, r in transformer.items())
    assert all(1 <= r <= fan[n] for n, r in ranks.items())
    # the depth ordering holds wherever the fan does not clamp
    assert ranks["encoder.0.rewrite"] >= ranks["encoder.3.rewrite"] > ranks["decoder.3.rewrite"]


def test_roformer_heuristic_falls_with_depth():
    from test_bs_roformer import TINY

    from trainables import bs_roformer

    model = bs_roformer.new_model("bs_roformer", {**TINY["bs_roformer"], "depth": 3})
    ranks = ranks_of(model, ROFORMER, rank=4, rank_mode="heuristic")
    by_layer = {i: {r for n, r in ranks.items() if n.startswith(f"layers.{i}.")} for i in range(3)}
    assert by_layer == {0: {8}, 1: {6}, 2: {4}}


@pytest.mark.parametrize("mode", ["uniform", "heuristic", "custom", "gradient"])
def test_every_mode_keeps_step0_and_trains_only_adapters_and_new_heads(mode, make_tiny, tiny_kwargs, tiny_mix):
    from trainables.separator import SeparatorBase

    base = SeparatorBase(model=make_tiny(), sources=["drums", "bass", "other", "vocals"], samplerate=22050,
                         segment=1.0, identity={}, config={"kwargs": tiny_kwargs})
    model, heads = HTDEMUCS.adapt_sources(base, ["kick", "hihat", "bass", "other", "vocals"],
                                          {"kick": "drums", "hihat": "drums"})
    with torch.no_grad():
        expected = model(tiny_mix)
    spec = lora.LoraSpec(rank=4, rank_mode=mode, layer_ranks={"encoder.0.*": 8} if mode == "custom" else {})
    adapted, ranks = lora.apply(copy.deepcopy(model), spec, heads, HTDEMUCS.default_targets, HTDEMUCS.rank_scales)
    with torch.no_grad():
        assert torch.equal(adapted(tiny_mix), expected)
    if mode == "gradient":  # reallocated at step 0 (B still zero): still the base, heads still trained
        from trainables import realloc

        ranks = realloc.allocate(realloc.importances(adapted), realloc.uniform_budget(adapted, 4))
        realloc.reshape(adapted, ranks)
        with torch.no_grad():
            assert torch.equal(adapted(tiny_mix), expected)
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert all("lora_" in n or "modules_to_save" in n for n in trainable)
    trained_heads = {n.split(".modules_to_save")[0].removeprefix("base_model.model.") for n in trainable
                     if "modules_to_save" in n}
    assert trained_heads == set(heads) and not set(ranks) & set(heads)


# --- search spaces ---------------------------------------------------------------------------------

def load(tmp_path, lora_section: dict, space: dict | None = None):
    data = {"study": "s", "model": {"sources": ["kick", "bass"]}, "lora": lora_section}
    if space:
        data["search"] = {"space": space}
    path = tmp_path / "modes.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return spaces.load(path)


def test_a_space_may_search_the_rank_mode_with_layer_ranks_under_custom(tmp_path):
    study = load(tmp_path, {"rank": 8}, {
        "lora.rank_mode": {"type": "choice", "values": ["uniform", "heuristic", "custom"]},
        'lora.layer_ranks."encoder.*"': {"type": "choice", "values": [4, 8], "when": {"lora.rank_mode": ["custom"]}}})
    assert [p.key for p in study.params] == ["lora.rank_mode", 'lora.layer_ranks."encoder.*"']


@pytest.mark.parametrize("lora_section, space, message", [
    ({"rank_mode": "uniform"}, {'lora.layer_ranks."encoder.*"': {"type": "choice", "values": [4, 8]}},
     r'search.space.lora.layer_ranks."encoder.\*": per-layer ranks need lora.rank_mode custom \(it is uniform\)'),
    ({}, {"lora.rank_mode": {"type": "choice", "values": ["uniform", "custom"]},
          'lora.layer_ranks."encoder.*"': {"type": "choice", "values": [4, 8]}},
     r"per-layer ranks need lora.rank_mode custom; add when: \{lora.rank_mode: \[custom\]\}"),
    ({"rank_mode": "heuristic", "layer_ranks": {"encoder.*": 4}}, None,
     "lora.layer_ranks: rank_mode heuristic sets every layer's rank itself"),
    ({"rank_mode": "gradual"}, None, "lora.rank_mode: 'gradual'; expected custom"),
    ({"layer_ranks": {"encoder.*": 4}}, {"lora.rank_mode": {"type": "choice", "values": ["uniform", "custom"]}},
     "lora.layer_ranks: rank_mode uniform sets every layer's rank itself; remove the fixed layer_ranks"),
])
def test_spaces_refuse_layer_ranks_a_mode_would_ignore(lora_section, space, message, tmp_path):
    with pytest.raises(RankhouseError, match=message):
        load(tmp_path, lora_section, space)


def test_the_preflight_adapter_checks_searched_layer_ranks_under_custom(tmp_path):
    """The widest adapter preflight builds holds every searched layer rank, so it is custom even
    when the file's fixed mode is another one the space also samples."""
    from platform.preflight import widest_lora

    study = load(tmp_path, {"rank": 4, "rank_mode": "heuristic"}, {
        "lora.rank_mode": {"type": "choice", "values": ["heuristic", "custom"]},
        'lora.layer_ranks."encoder.*"': {"type": "choice", "values": [4, 8], "when": {"lora.rank_mode": ["custom"]}}})
    widest = widest_lora(study)
    assert widest["rank_mode"] == "custom" and widest["layer_ranks"] == {"encoder.*": 8}
    assert lora.LoraSpec.from_config(widest).layer_ranks == {"encoder.*": 8}
