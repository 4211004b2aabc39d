"""MSST's ``lora:`` block in a search space (platform/msst.py): each key translated to
rankhouse's meaning or refused with the reason, never dropped; the shipped BS-RoFormer spaces load."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from platform import spaces
from trainables.errors import RankhouseError

ROOT = Path(__file__).resolve().parents[1]
# MSST's documented block, as in its LoRA docs
MSST = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "merge_weights": False, "fan_in_fan_out": False,
        "enable_lora": [True]}


def load(tmp_path, lora: dict, space: dict | None = None, **extra):
    data = {"study": "s", "model": {"family": "bs_roformer", "sources": ["vocals"]}, "lora": lora, **extra}
    if space:
        data["search"] = {"space": space}
    path = tmp_path / "msst.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return spaces.load(path)


def test_the_documented_block_means_rank_alpha_dropout(tmp_path):
    study = load(tmp_path, MSST)
    lora = study.config["lora"]
    assert (lora["rank"], lora["alpha"], lora["dropout"], lora["scaling"]) == (8, 16.0, 0.05, "standard")
    assert study.config["registry"]["merged"] is False
    assert not set(lora) & {"r", "lora_alpha", "lora_dropout", "enable_lora", "merge_weights", "fan_in_fan_out"}


def test_target_modules_become_globs_over_module_paths(tmp_path):
    study = load(tmp_path, {**MSST, "target_modules": ["to_qkv", "to_out.0"]})
    assert study.config["lora"]["targets"] == ["*.to_qkv", "*.to_out.0"]


def test_target_modules_resolve_on_a_real_model(tmp_path):
    """``*.to_qkv`` takes BS-RoFormer's fused attention inputs, as PEFT's suffix rule would."""
    from test_bs_roformer import tiny

    from trainables import lora

    study = load(tmp_path, {**MSST, "target_modules": ["to_qkv"]})
    ranks = lora.resolve_ranks(tiny(), lora.LoraSpec.from_config(study.config["lora"]))
    assert ranks and all(n.endswith(".to_qkv") for n in ranks) and set(ranks.values()) == {8}


def test_merge_weights_true_asks_promotion_for_a_merged_model(tmp_path):
    assert load(tmp_path, {**MSST, "merge_weights": True}).config["registry"]["merged"] is True


def test_search_space_keys_may_use_msst_names(tmp_path):
    study = load(tmp_path, MSST, space={"lora.r": {"type": "choice", "values": [4, 8]},
                                        "lora.lora_alpha": {"type": "loguniform", "low": 4.0, "high": 32.0},
                                        "lora.lora_dropout": {"type": "uniform", "low": 0.0, "high": 0.1}})
    assert [p.path for p in study.params] == [("lora", "rank"), ("lora", "alpha"), ("lora", "dropout")]


def test_rankhouse_keys_may_sit_beside_msst_keys(tmp_path):
    study = load(tmp_path, {**MSST, "scaling": "rslora", "layer_ranks": {"layers.0.*": 4}})
    assert study.config["lora"]["scaling"] == "rslora" and study.config["lora"]["layer_ranks"] == {"layers.0.*": 4}


@pytest.mark.parametrize("change, message", [
    ({"enable_lora": [True, False, True]}, r"lora.enable_lora: \[True, False, True\]: adapting only some output "
                                           r"groups .* has no PEFT equivalent"),
    ({"enable_lora": "yes"}, "lora.enable_lora: 'yes'; expected a list of booleans"),
    ({"fan_in_fan_out": True}, r"lora.fan_in_fan_out: True is for GPT-2-style Conv1D layers"),
    ({"rank": 4}, r"lora: both r \(MSST\) and rank \(rankhouse\) are set"),
    ({"target_modules": "to_qkv"}, "lora.target_modules: 'to_qkv'; expected a list of module names"),
    ({"merge_weights": "yes"}, "lora.merge_weights: 'yes'; expected True or False"),
    ({"r": 0}, r"lora.rank: 0; expected an integer rank >= 1"),
])
def test_what_cannot_be_honoured_is_refused_naming_the_file_and_key(change, message, tmp_path):
    with pytest.raises(RankhouseError, match=message) as err:
        load(tmp_path, {**MSST, **change})
    assert str(err.value).startswith(str(tmp_path / "msst.yaml"))


def test_msst_space_keys_work_beside_a_rankhouse_block(tmp_path):
    study = load(tmp_path, {"rank": 4, "alpha": 8.0}, space={"lora.r": {"type": "choice", "values": [2, 4]}})
    assert study.config["lora"]["rank"] == 4 and [p.path for p in study.params] == [("lora", "rank")]


@pytest.mark.parametrize("name", ["bs_roformer_techhouse", "bs_roformer_vocals"])
def test_the_shipped_bs_roformer_spaces_load(name):
    study = spaces.load(ROOT / "search_spaces" / f"{name}.yaml")
    assert study.config["model"]["family"] == "bs_roformer"
    keys = {p.key for p in study.params}
    assert {"lora.alpha", "lora.dropout", "optim.lr", "optim.schedule"} <= keys
    assert any(k.startswith("lora.layer_ranks.") for k in keys)  # targets: rank 0 leaves a group out


def test_the_vocals_space_is_an_msst_block():
    raw = yaml.safe_load((ROOT / "search_spaces" / "bs_roformer_vocals.yaml").read_text())
    assert {"r", "lora_alpha", "lora_dropout", "enable_lora"} <= set(raw["lora"])
    study = spaces.load(ROOT / "search_spaces" / "bs_roformer_vocals.yaml")
    assert study.config["model"]["sources"] == ["vocals"]
    assert study.config["lora"]["targets"] == ["*.to_qkv", "*.to_out.0", "*.net.1", "*.net.4"]
