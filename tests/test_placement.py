"""``lora.placement`` (trainables/lora.py, each family's ``layer_groups``): which layer groups get
adapters, fixed or searched, in every rank mode, on real HT-Demucs and BS-RoFormer models."""

from __future__ import annotations

import copy
import fnmatch

import optuna
import pytest
import yaml

from platform import spaces
from platform.budget import BudgetedOptunaSearch, ParameterCounter, rejected
from platform.preflight import widest_lora
from trainables import htdemucs, lora
from trainables.errors import RankhouseError
from trainables.family import get_family

HTDEMUCS = get_family("htdemucs")
ROFORMER = get_family("bs_roformer")
BRANCHES = {"encoder", "tencoder", "crosstransformer", "decoder", "tdecoder"}


def ranks_of(model, family, **spec):
    return lora.resolve_ranks(model, lora.LoraSpec.from_config(spec), default_targets=family.default_targets,
                              rank_scales=family.rank_scales, groups=family.layer_groups(model))


def test_htdemucs_groups_cover_every_default_target_once(make_tiny):
    model = make_tiny()
    groups = HTDEMUCS.layer_groups(model)
    assert list(groups) == ["encoder", "tencoder", "transformer", "decoder", "tdecoder"]
    for name in ranks_of(model, HTDEMUCS, rank=2):
        hits = [g for g, patterns in groups.items() if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
        assert len(hits) == 1, (name, hits)


@pytest.mark.parametrize("mode", ["custom", "uniform", "heuristic"])
def test_a_group_switched_off_loses_exactly_its_adapters(make_tiny, mode):
    model = make_tiny()
    every = ranks_of(model, HTDEMUCS, rank=4, rank_mode=mode)
    placed = ranks_of(model, HTDEMUCS, rank=4, rank_mode=mode, placement={"tencoder": False, "transformer": False,
                                                                          "decoder": True})
    assert {n.split(".")[0] for n in every} == BRANCHES
    assert {n.split(".")[0] for n in placed} == {"encoder", "decoder", "tdecoder"}
    # the others keep the ranks their mode gives them with every group on
    assert placed == {n: r for n, r in every.items() if n.split(".")[0] in {"encoder", "decoder", "tdecoder"}}


def test_layer_ranks_of_a_group_switched_off_are_moot_not_wrong(make_tiny):
    ranks = ranks_of(make_tiny(), HTDEMUCS, rank=4, layer_ranks={"tencoder.*": 8, "encoder.*": 2},
                     placement={"tencoder": False})
    assert not any(n.startswith("tencoder.") for n in ranks)
    assert {r for n, r in ranks.items() if n.startswith("encoder.")} == {2}
    with pytest.raises(RankhouseError, match="lora.layer_ranks: pattern 'tencodr.*' matches no adaptable module"):
        ranks_of(make_tiny(), HTDEMUCS, rank=4, layer_ranks={"tencodr.*": 8}, placement={"tencoder": False})


def test_placement_errors_say_what_to_do(make_tiny):
    model = make_tiny()
    with pytest.raises(RankhouseError, match="lora.placement.transformr: not a layer group of this family; "
                                             "expected one of encoder, tencoder, transformer, decoder, tdecoder"):
        ranks_of(model, HTDEMUCS, placement={"transformr": False})
    off = {g: False for g in HTDEMUCS.layer_groups(model)}
    with pytest.raises(RankhouseError, match="every targeted module is in a group switched off"):
        ranks_of(model, HTDEMUCS, placement=off)
    with pytest.raises(RankhouseError, match="lora.placement.encoder: 'no'; expected true or false"):
        lora.LoraSpec.from_config({"placement": {"encoder": "no"}})
    with pytest.raises(RankhouseError, match="this model family documents no layer groups"):
        lora.resolve_ranks(model, lora.LoraSpec(placement={"encoder": False}))


def test_roformer_groups_are_time_and_frequency_transformers():
    from test_bs_roformer import tiny

    for arch, expected in (("bs_roformer", ["time", "freq"]), ("mel_band_roformer", ["linear", "time", "freq"])):
        model = tiny(arch)
        groups = ROFORMER.layer_groups(model)
        assert list(groups) == expected
        every = ranks_of(model, ROFORMER, rank=2)
        freq_only = ranks_of(model, ROFORMER, rank=2, placement={"time": False})
        time_index = "0" if arch == "bs_roformer" else "1"
        assert freq_only and all(n.split(".")[2] != time_index for n in freq_only)
        assert set(every) - set(freq_only) == {n for n in every if n.split(".")[2] == time_index}


def test_step_zero_equivalence_and_only_placed_adapters_train(make_tiny, tiny_mix):
    import torch

    model = make_tiny()
    with torch.no_grad():
        reference = model(tiny_mix)
    spec = lora.LoraSpec.from_config({"rank": 4, "placement": {"encoder": False, "tdecoder": False}})
    adapted, ranks = HTDEMUCS.apply_lora(copy.deepcopy(model), spec)
    with torch.no_grad():
        assert torch.allclose(adapted(tiny_mix), reference, atol=1e-5)
    trained = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    assert not any(".encoder." in n or ".tdecoder." in n for n in trained)


SPACE = {
    "study": "placed", "model": {"sources": ["drums", "bass", "other", "vocals"]},
    "search": {"space": {"lora.placement.tencoder": {"type": "choice", "values": [True, False]},
                         "lora.placement.transformer": {"type": "choice", "values": [True, False]}}},
}


def write(tmp_path, doc: dict):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_spaces_search_placement_and_preflight_builds_every_group(tmp_path):
    study = spaces.load(write(tmp_path, SPACE))
    assert [p.path for p in study.params] == [("lora", "placement", "tencoder"), ("lora", "placement", "transformer")]
    assert widest_lora(study)["placement"] == {"tencoder": True, "transformer": True}
    bad = copy.deepcopy(SPACE)
    bad["search"]["space"]["lora.placement.tencoder"]["values"] = [True, "off"]
    with pytest.raises(RankhouseError, match=r"search.space.lora.placement.tencoder.values\[1\]: 'off'; "
                                             r"expected true or false"):
        spaces.load(write(tmp_path, bad))


def test_a_sample_with_every_group_off_is_rejected_without_a_budget(tmp_path, make_tiny, tiny_kwargs):
    base = tmp_path / "tiny.safetensors"
    htdemucs.save_checkpoint(make_tiny(), base, tiny_kwargs)
    config = {"model": {"family": "htdemucs", "base": str(base), "sources": list(htdemucs.EMBEDDED_SOURCES)},
              "data": {}, "lora": {"rank": 2, "placement": {"encoder": False, "decoder": False, "tdecoder": False}}}
    keys = {"lora.placement.tencoder": ["lora", "placement", "tencoder"],
            "lora.placement.transformer": ["lora", "placement", "transformer"]}
    params = [spaces.Param(tuple(path), key, "choice", {"values": [True, False]}, {}) for key, path in keys.items()]
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = BudgetedOptunaSearch(space=spaces.DefineByRun(params), configs=spaces.SampleToConfig(params),
                                    metric="valid/sdr", mode="max",
                                    sampler=optuna.samplers.GridSampler({k: [True, False] for k in keys}, seed=0),
                                    study_name="placed", record=storage, budget=None, counter=ParameterCounter(config))
    returned = []
    for i in range(3):
        returned.append(spaces.sampled_values(params, searcher.suggest(f"t{i}")))
        searcher.on_trial_complete(f"t{i}", result={"valid/sdr": 1.0, "training_iteration": 1})
    assert {"lora.placement.tencoder": False, "lora.placement.transformer": False} not in returned
    assert len({tuple(sorted(r.items())) for r in returned}) == 3  # the three buildable cells of the grid
    searcher.flush()  # the record is written on a thread of its own
    rows = rejected(storage, "placed")
    assert [r["params"] for r in rows] == [{"lora.placement.tencoder": False, "lora.placement.transformer": False}]
    assert "every targeted module is in a group switched off" in rows[0]["reason"]
