"""The HT-Demucs family (trainables/htdemucs.py): source heads, bases, checkpoints, safe loading."""

from __future__ import annotations

import hashlib
import pickle
import re
from fractions import Fraction

import pytest
import torch

from trainables import htdemucs
from trainables.errors import RankhouseError
from trainables.family import get_family
from trainables.separator import SeparatorBase

pytestmark = pytest.mark.usefixtures("one_thread")

TARGET = ["kick", "hihat", "bass", "other", "vocals"]
PARENTS = {"kick": "drums", "hihat": "drums"}


def forward(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def as_base(model, kwargs) -> SeparatorBase:
    return SeparatorBase(model=model, sources=list(model.sources), samplerate=int(model.samplerate),
                         segment=float(model.segment), identity={"name": "tiny", "sha256": None},
                         config={"kwargs": kwargs})


# --- adapt_sources ---------------------------------------------------------------------------------

def test_adapt_sources_new_heads_start_from_their_parent(make_tiny, tiny_kwargs, tiny_mix):
    base_model = make_tiny()
    ref = forward(base_model, tiny_mix)
    family = get_family("htdemucs")
    model, heads = family.adapt_sources(as_base(base_model, tiny_kwargs), TARGET, PARENTS)
    model.requires_grad_(False)
    assert list(model.sources) == TARGET
    assert heads == ["decoder.3.conv_tr", "tdecoder.3.conv_tr"]
    assert all(type(model.get_submodule(h)).__name__.startswith("ConvTranspose") for h in heads)
    out = forward(model, tiny_mix)
    assert out.shape == (1, len(TARGET), 2, tiny_mix.shape[-1])
    for i, source in enumerate(TARGET):
        j = base_model.sources.index(PARENTS.get(source, source))
        assert torch.equal(out[:, i], ref[:, j]), source
    # everything but the heads is a copy of the base, weight for weight
    old, new = base_model.state_dict(), model.state_dict()
    assert set(old) == set(new)
    for key in old:
        if not any(key.startswith(h + ".") for h in heads):
            assert torch.equal(old[key], new[key]), key
    # a copy, not a view: training the new model cannot touch the base
    with torch.no_grad():
        model.get_submodule(heads[0]).weight.add_(1.0)
    assert torch.equal(forward(base_model, tiny_mix), ref)


def test_adapt_sources_reorders_heads(make_tiny, tiny_kwargs, tiny_mix):
    base_model = make_tiny()
    ref = forward(base_model, tiny_mix)
    order = ["vocals", "drums", "other", "bass"]
    model, heads = get_family("htdemucs").adapt_sources(as_base(base_model, tiny_kwargs), order, {})
    out = forward(model.requires_grad_(False), tiny_mix)
    for i, source in enumerate(order):
        assert torch.equal(out[:, i], ref[:, base_model.sources.index(source)]), source


def test_adapt_sources_same_sources_copies_the_base(make_tiny, tiny_kwargs, tiny_mix):
    """A model of its own: adapters injected into it must not reach the base, which promotion
    uses as the unadapted reference."""
    base_model = make_tiny()
    model, heads = get_family("htdemucs").adapt_sources(as_base(base_model, tiny_kwargs), list(base_model.sources), {})
    assert model is not base_model and heads == []
    assert not set(map(id, model.parameters())) & set(map(id, base_model.parameters()))
    with torch.no_grad():
        assert torch.equal(model(tiny_mix), base_model(tiny_mix))


def test_adapt_sources_errors(make_tiny, tiny_kwargs):
    base = as_base(make_tiny(), tiny_kwargs)
    family = get_family("htdemucs")
    with pytest.raises(RankhouseError, match=r"model\.sources: 'hihat' is not a source of the base .* model\.parents\.hihat"):
        family.adapt_sources(base, TARGET, {"kick": "drums"})
    with pytest.raises(RankhouseError, match=r"model\.parents\.kick: 'percussion' is not a source of the base "
                                             r"\(drums, bass, other, vocals\)"):
        family.adapt_sources(base, TARGET, {"kick": "percussion", "hihat": "drums"})


# --- checkpoints and bases -------------------------------------------------------------------------

def test_save_checkpoint_roundtrip(make_tiny, tiny_kwargs, tiny_mix, tmp_path):
    model = make_tiny(seed=5)
    path = tmp_path / "base.safetensors"
    digest = htdemucs.save_checkpoint(model, path, tiny_kwargs, extra={"epochs": 3})
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not list(tmp_path.glob("*.tmp"))
    loaded, kwargs = htdemucs.load_safetensors(path)
    assert kwargs == tiny_kwargs and list(loaded.sources) == list(model.sources)
    assert torch.equal(forward(loaded.requires_grad_(False), tiny_mix), forward(model, tiny_mix))


def test_build_base_from_a_checkpoint_path_reports_its_identity(make_tiny, tiny_kwargs, tiny_mix, tmp_path):
    model = make_tiny(seed=5)
    path = tmp_path / "base.safetensors"
    htdemucs.save_checkpoint(model, path, tiny_kwargs)
    base = get_family("htdemucs").build_base({"base": str(path)})
    assert base.identity == {"name": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert base.sources == list(model.sources) and base.samplerate == 22050 and base.segment == 1.0
    assert base.config["kwargs"] == tiny_kwargs
    assert not base.model.training
    assert torch.equal(forward(base.model.requires_grad_(False), tiny_mix), forward(model, tiny_mix))


def test_build_base_from_a_checkpoint_path_that_does_not_exist(tmp_path):
    with pytest.raises(RankhouseError, match="model.base: .*missing.safetensors: no such file"):
        get_family("htdemucs").build_base({"base": str(tmp_path / "missing.safetensors")})


def test_load_safetensors_refuses_a_foreign_file(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(RankhouseError, match="not a rankhouse HT-Demucs checkpoint"):
        htdemucs.load_safetensors(path)


def test_build_base_embedded_missing_says_how_to_build_it(monkeypatch, tmp_path):
    monkeypatch.setattr(htdemucs.HTDemucsFamily, "embedded", tmp_path / "nothing.safetensors")
    with pytest.raises(RankhouseError, match="platform.base --family htdemucs") as err:
        get_family("htdemucs").build_base({"base": "embedded"})
    assert "nothing.safetensors" in str(err.value)


@pytest.fixture
def no_download(monkeypatch):
    """Any attempt to fetch weights fails the test loudly."""
    import urllib.request

    def refuse(*args, **kwargs):
        raise AssertionError(f"attempted a download: {args[:1]}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_pretrained_not_cached_says_where_to_put_it(monkeypatch, tmp_path, no_download):
    monkeypatch.setattr(htdemucs, "HUB_CHECKPOINTS", tmp_path / "hub" / "checkpoints")
    with pytest.raises(RankhouseError) as err:
        get_family("htdemucs").build_base({"base": "htdemucs"})
    msg = str(err.value)
    assert "955717e8-8726e21a.th" in msg and str(tmp_path / "hub" / "checkpoints") in msg
    assert "never downloads" in msg and "\n" not in msg
    assert not (tmp_path / "hub").exists()


def test_pretrained_bag_of_models_is_refused(monkeypatch, tmp_path, no_download):
    monkeypatch.setattr(htdemucs, "HUB_CHECKPOINTS", tmp_path)
    with pytest.raises(RankhouseError, match="htdemucs_ft is a bag of 4 models"):
        htdemucs.find_pretrained("htdemucs_ft")


def test_pretrained_cached_is_found(monkeypatch, tmp_path, no_download):
    monkeypatch.setattr(htdemucs, "HUB_CHECKPOINTS", tmp_path)
    (tmp_path / "955717e8-8726e21a.th").write_bytes(b"")
    assert htdemucs.find_pretrained("htdemucs") == tmp_path / "955717e8-8726e21a.th"


def test_unknown_pretrained_name_lists_known_names(no_download):
    with pytest.raises(RankhouseError, match="unknown pretrained model 'htdemucz'; known: .*htdemucs, .*htdemucs_ft"):
        get_family("htdemucs").build_base({"base": "htdemucz"})


def test_unknown_family():
    with pytest.raises(RankhouseError, match="unknown family 'demucs9'; choose one of acestep, bs_roformer, htdemucs"):
        get_family("demucs9")


# --- demucs .th packages, read with weights_only ---------------------------------------------------

def write_package(path, model, kwargs, **extra):
    from demucs.htdemucs import HTDemucs

    package = {"klass": HTDemucs, "args": (), "kwargs": {**kwargs, "sources": list(model.sources)},
               # demucs stores half-precision weights (states.serialize_model(half=True))
               "state": {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()},
               "training_args": {"epochs": 1}, **extra}
    torch.save(package, str(path))


def test_load_demucs_package(make_tiny, tiny_kwargs, tiny_mix, tmp_path):
    model = make_tiny(seed=3)
    kwargs = {**tiny_kwargs, "segment": Fraction(1, 1)}  # real packages carry a Fraction
    path = tmp_path / "955717e8-8726e21a.th"
    write_package(path, model, kwargs)
    loaded, got = htdemucs.load_demucs_package(path)
    assert got == kwargs and list(loaded.sources) == list(model.sources)
    expected = {k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    # and build_base takes the same file by path, with its identity
    base = get_family("htdemucs").build_base({"base": str(path)})
    assert base.identity["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    out = forward(base.model.requires_grad_(False), tiny_mix)
    assert out.shape == (1, 4, 2, tiny_mix.shape[-1])


CALLS: list = []


def _record(*args):
    CALLS.append(args)
    return "pwned"


class Payload:
    """Unpickling this with weights_only=False would call _record: the test proves it never runs."""

    def __reduce__(self):
        return _record, ("unpickled",)


def test_load_demucs_package_refuses_arbitrary_pickles(tmp_path):
    CALLS.clear()
    path = tmp_path / "evil.th"
    torch.save({"klass": "HTDemucs", "state": {}, "payload": Payload()}, str(path))
    with pytest.raises(RankhouseError, match="cannot be read safely as a demucs checkpoint") as err:
        htdemucs.load_demucs_package(path)
    assert "\n" not in str(err.value)
    assert CALLS == []  # the payload's __reduce__ never ran


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_load_demucs_package_refuses_other_classes(tmp_path):
    path = tmp_path / "bag.th"
    with open(path, "wb") as f:
        pickle.dump({"models": []}, f)  # no torch.save: a plain pickle is not a demucs package either
    with pytest.raises(RankhouseError, match=re.escape(str(path))):
        htdemucs.load_demucs_package(path)
    path = tmp_path / "dict.th"
    torch.save({"klass": None, "kwargs": {}, "state": {}}, str(path))
    with pytest.raises(RankhouseError, match="not an HTDemucs package"):
        htdemucs.load_demucs_package(path)
