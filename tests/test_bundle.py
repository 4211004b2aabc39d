"""Adapter bundles (adapter + rankhouse.json): what promote registers and separate/export load.
A bundle rebuilds into the model that was trained, and refuses bad files and the wrong base."""

from __future__ import annotations

import json

import pytest
import torch

from trainables import bundle, htdemucs, lora, loop
from trainables.errors import RankhouseError

SOURCES = ["kick", "hihat", "bass", "other", "vocals"]


@pytest.fixture
def trained(make_tiny, tiny_kwargs, tmp_path, one_thread):
    """A tiny base on disk, an adapted model with non-zero adapters, and its bundle folder."""
    base = tmp_path / "base.safetensors"
    htdemucs.save_checkpoint(make_tiny(), base, tiny_kwargs)
    cfg = {"model": {"family": "htdemucs", "base": str(base), "sources": SOURCES,
                     "parents": {"kick": "drums", "hihat": "drums"}},
           "data": {"segment": 1.0},
           "lora": {"rank": 4, "alpha": 8.0, "dropout": 0.0, "scaling": "standard", "targets": None,
                    "layer_ranks": {}}}
    setup = loop.build_model(cfg)
    torch.manual_seed(3)
    with torch.no_grad():  # a trained adapter: B is zero at initialisation
        for name, p in setup.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    folder = tmp_path / "adapter"
    lora.save(setup.model, folder)
    (folder / bundle.MANIFEST).write_text(json.dumps(bundle.manifest(setup)))
    return setup.model.eval(), folder, base


def test_a_bundle_rebuilds_the_trained_model(trained, tiny_mix):
    model, folder, base = trained
    loaded = bundle.load(folder)
    assert loaded.manifest["base"]["sha256"] == htdemucs.sha256(base)
    assert list(loaded.manifest["sources"]) == SOURCES and loaded.manifest["trainable_params"] > 0
    with torch.no_grad():
        expected = model(tiny_mix)
        assert torch.equal(loaded.model(tiny_mix), expected)
        with loaded.model.disable_adapter():  # the adapters were loaded, not left at zero
            assert not torch.allclose(loaded.model(tiny_mix), expected, atol=1e-4)


def test_another_base_is_refused(trained, make_tiny, tiny_kwargs, tmp_path):
    _, folder, _ = trained
    other = tmp_path / "other.safetensors"
    htdemucs.save_checkpoint(make_tiny(seed=1), other, tiny_kwargs)
    with pytest.raises(RankhouseError, match="sha256"):
        bundle.load(folder, base=str(other))


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "adapter_model.safetensors").write_bytes((f / "adapter_model.safetensors").read_bytes()[:64]),
     "corrupt adapter weights"),
    (lambda f: (f / bundle.MANIFEST).unlink(), "not a rankhouse adapter bundle"),
    (lambda f: (f / bundle.MANIFEST).write_text("{not json"), "corrupt or of another format"),
    (lambda f: (f / "adapter_config.json").unlink(), "not a PEFT adapter"),
])
def test_damaged_bundles_are_refused_with_one_line(trained, damage, message):
    _, folder, _ = trained
    damage(folder)
    with pytest.raises(RankhouseError, match=message) as err:
        bundle.load(folder)
    assert "\n" not in str(err.value)


def test_non_finite_adapter_weights_are_refused(trained):
    from safetensors.torch import load_file, save_file

    _, folder, _ = trained
    path = folder / "adapter_model.safetensors"
    tensors = load_file(str(path))
    first = next(k for k in tensors if "lora_A" in k)
    tensors[first][0] = float("nan")
    save_file(tensors, str(path))
    with pytest.raises(RankhouseError, match="non-finite"):
        bundle.load(folder)
