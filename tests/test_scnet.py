"""SCNet (trainables/scnet.py) computes what MSST's SCNet computes: a checkpoint and an output
written by MSST's own code (``tests/fixtures/msst/scnet.*``, see its README) loaded with MSST's
key names and no translation, and MSST's full config building a model of MSST's size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from trainables.scnet import SCNet

FIXTURES = Path(__file__).parent / "fixtures" / "msst"


def fixture_model() -> SCNet:
    config = yaml.load((FIXTURES / "scnet.yaml").read_text(), Loader=yaml.FullLoader)["model"]
    model = SCNet(**config).eval()
    state = torch.load(FIXTURES / "scnet.ckpt", weights_only=True)  # a plain state dict, as MSST saves it
    model.load_state_dict(state, strict=True)  # every key by MSST's name, none missing or left over
    return model


def test_an_msst_checkpoint_computes_msst_output():
    io = load_file(str(FIXTURES / "scnet_io.safetensors"))
    with torch.no_grad():
        out = fixture_model()(io["input"])
    assert out.shape == io["output"].shape == (1, 4, 2, 22050)  # (batch, sources, channels, samples)
    # fp32 rounding differs between CPUs' kernels (3.6e-7 here; a float64 run is as far from
    # MSST's output as this one): the tolerance is 1e-5 of the output's peak, as for the RoFormers
    tolerance = 1e-5 * io["output"].abs().max().item()
    assert (out - io["output"]).abs().max().item() < tolerance


def test_a_hann_window_would_not_be_msst():
    """MSST passes no window, so its STFT's is rectangular: a Hann one changes the output."""
    model, io = fixture_model(), load_file(str(FIXTURES / "scnet_io.safetensors"))
    args = model._stft_args

    def hann(like):
        return {**args(like), "window": torch.hann_window(model.win_size, dtype=like.dtype)}

    model._stft_args = hann
    with torch.no_grad():
        out = model(io["input"])
    assert (out - io["output"]).abs().max().item() > 1e-2


@pytest.mark.parametrize("kwargs", [{}, {"nfft": 2048, "hop_size": 512, "win_size": 2048}],
                         ids=["msst-44k", "embedded-22k"])
def test_the_stft_round_trips(kwargs):
    """The STFT the encoder reads and the inverse the decoder's output goes through give the
    waveform back (rectangular window, a length that is not a whole number of hops), so what
    the model cannot reconstruct is the model's, not the transform's."""
    model = SCNet(dims=[4, 8, 8, 8], num_dplayer=2, **kwargs)
    mix = torch.randn(2, 2, 11_025 + 37, generator=torch.Generator().manual_seed(0))
    spec = model.spectrogram(mix)
    assert spec.shape[:3] == (2, 4, model.nfft // 2 + 1)  # real and imaginary planes per channel
    assert spec.shape[3] % 2 == 0  # an even frame count: what the dual-path layers' frame FFT needs
    back = model.waveform(spec, channels=2, length=mix.shape[-1])
    assert back.shape == (2, 1, 2, mix.shape[-1])  # one "source": the mixture itself
    assert (back[:, 0] - mix).abs().max().item() < 1e-5


def test_msst_full_config_builds_msst_size():
    """MSST's configs/config_musdb18_scnet.yaml (its defaults): 372 keys, 10,578,768 parameters."""
    with torch.device("meta"):
        model = SCNet()
    assert len(model.state_dict()) == 372
    assert sum(p.numel() for p in model.parameters()) == 10_578_768
    def share(kind) -> float:
        return sum(p.numel() for m in model.modules() if isinstance(m, kind) for p in m.parameters()) / 10_578_768

    # why LoRA on SCNet needs its LSTMs: PEFT adapts Linear layers, 9% of the model; the BiLSTMs are 75%
    assert 0.74 < share(torch.nn.LSTM) < 0.75 and 0.09 < share(torch.nn.Linear) < 0.095


@pytest.mark.parametrize("kwargs, message", [
    ({"dims": [2, 8, 16, 32]}, "dims\\[0\\] = 2: must be 2 x audio_channels"),
    ({"num_dplayer": 3}, "num_dplayer = 3: must be even"),
    ({"conv_kernel": 4}, "conv_kernel = 4: must be odd"),
    ({"band_kernel": [3, 5, 16]}, "band_kernel 5 with band_stride 4"),
])
def test_a_config_scnet_cannot_run_is_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SCNet(**kwargs)


def test_any_length_comes_back_whole():
    torch.manual_seed(0)
    model = SCNet(dims=[4, 8, 8, 8], num_dplayer=2).eval()
    for length in (4096, 5000, 6144):  # a multiple of the hop, not, and an even frame count
        with torch.no_grad():
            out = model(torch.randn(2, 2, length))
        assert out.shape == (2, 4, 2, length)


# --- the family: sources from parents, LoRA on the LSTMs ------------------------------------------

TINY = {"dims": [4, 8, 8, 8], "num_dplayer": 2, "nfft": 1024, "hop_size": 256, "win_size": 1024}
FIVE = ["kick", "hihat", "bass", "other", "vocals"]
PARENTS = {"kick": "drums", "hihat": "drums"}


@pytest.fixture
def tiny_base():
    from trainables.scnet import SCNetFamily

    torch.manual_seed(0)
    return SCNetFamily().build_base({"base": "scratch", "kwargs": TINY})


def test_new_sources_start_from_their_parents_block(tiny_base):
    from trainables.family import get_family

    family = get_family("scnet")
    model, heads = family.adapt_sources(tiny_base, FIVE, PARENTS)
    assert heads == ["decoder.2.1"]  # the last decoder stage: every source's block of output channels
    x = torch.randn(1, 2, 8192)
    with torch.no_grad():
        base, out = tiny_base.model.eval()(x), model(x)
    for i, parent in enumerate([0, 0, 1, 2, 3]):  # kick and hihat as drums, the rest as themselves
        assert torch.equal(out[:, i], base[:, parent])


def five_stems(base) -> torch.nn.Module:
    """The base with its heads rebuilt for five sources, frozen, no adapter (as the loop builds it)."""
    from trainables.family import get_family

    return get_family("scnet").adapt_sources(base, FIVE, PARENTS)[0].requires_grad_(False)


def adapted(base, **spec):
    from trainables import lora
    from trainables.family import get_family

    family = get_family("scnet")
    return family.apply_lora(five_stems(base), lora.LoraSpec(rank=2, **spec), ["decoder.2.1"])


def test_lstm_lora_is_the_base_at_step_0_and_trains_only_adapters_and_heads(tiny_base):
    reference = five_stems(tiny_base)
    model, ranks = adapted(tiny_base)
    lstms = [n for n in ranks if ".lstm_layers." in n]
    assert len(lstms) == 4 and all(ranks[n] == 2 for n in lstms)  # 2 dual-path layers x 2 BiLSTMs
    x = torch.randn(1, 2, 8192)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or ".decoder.2.1." in n for n in trainable)
    lstm_adapters = [n for n in trainable if ".lstm_layers.0.lora_" in n]
    # A and B for weight_ih_l0, weight_hh_l0 and both _reverse, in each of the two BiLSTMs' first one
    assert len({n.split("lora_")[1] for n in lstm_adapters}) == 8


def test_lstm_lora_trains_reloads_and_merges_exactly(tiny_base, tmp_path):
    from trainables import lora

    model, _ = adapted(tiny_base)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, target = torch.randn(2, 2, 8192), torch.randn(2, 5, 2, 8192)
    for _ in range(3):
        opt.zero_grad()
        (model(x) - target).abs().mean().backward()
        opt.step()
    lstm = dict(model.named_modules())["base_model.model.separation_net.dp_modules.1.lstm_layers.0"]
    assert all(b.abs().max() > 0 for b in lstm.lora_B["default"].values())  # the LSTM adapters learnt
    model.eval()
    with torch.no_grad():
        trained = model(x)
    lora.save(model, tmp_path / "adapter")
    reloaded = lora.load(five_stems(tiny_base), tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(x), trained)
        merged = reloaded.merge_and_unload()
        assert isinstance(merged.separation_net.dp_modules[1].lstm_layers[0], torch.nn.LSTM)
        assert (merged(x) - trained).abs().max().item() < 1e-5


def test_lstm_lora_refuses_dropout_and_ranks_wider_than_the_lstm(tiny_base):
    from trainables.errors import RankhouseError

    with pytest.raises(RankhouseError, match="lora_dropout 0.1: not supported for LSTM layers"):
        adapted(tiny_base, dropout=0.1)
    with pytest.raises(RankhouseError, match=r"rank 9 for separation_net.dp_modules.0.lstm_layers.0 exceeds"):
        adapted(tiny_base, layer_ranks={"separation_net.dp_modules.0.lstm_layers.0": 9})


def test_an_msst_space_with_a_lora_block_adapts_the_msst_checkpoints_lstms(tmp_path):
    """A search space as an MSST user writes it: their SCNet checkpoint, its config YAML and the
    ``lora:`` block of MSST's config (PEFT-style module names), translated key by key."""
    from platform import spaces
    from trainables import lora, loop

    space = tmp_path / "mine.yaml"
    space.write_text(yaml.safe_dump({
        "study": "mine",
        "model": {"family": "scnet", "base": str(FIXTURES / "scnet.ckpt"), "config": str(FIXTURES / "scnet.yaml"),
                  "sources": ["drums", "bass", "other", "vocals"]},
        "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "merge_weights": True,
                 "target_modules": ["lstm_layers.0", "lstm_layers.1"]},
        "search": {"space": {"lora.rank": {"type": "choice", "values": [2, 4]}}},
    }))
    study = spaces.load(space)
    assert study.config["lora"]["targets"] == ["*.lstm_layers.0", "*.lstm_layers.1"]
    assert (study.config["lora"]["rank"], study.config["lora"]["alpha"]) == (4, 8.0)
    assert study.config["registry"]["merged"] is True
    setup = loop.base_model(study.config)
    assert setup.base.samplerate == 44100 and setup.modules_to_save == []  # the checkpoint's own four sources
    _, ranks = setup.family.apply_lora(setup.model, lora.LoraSpec.from_config(study.config["lora"]))
    assert ranks == {f"separation_net.dp_modules.{i}.lstm_layers.{j}": 4 for i in range(2) for j in range(2)}


def test_the_default_targets_reach_the_lstms_most_of_scnet():
    """Linear layers alone would be 9% of SCNet; with the LSTMs the adapters reach most of it
    (the depthwise convolutions, norms and the rebuilt heads stay out)."""
    from trainables import lora
    from trainables.scnet import SCNetFamily

    with torch.device("meta"):
        model = SCNet(sources=FIVE)
    ranks = lora.resolve_ranks(model, lora.LoraSpec(rank=4), ["decoder.2.1"], SCNetFamily.default_targets)
    share = lora.coverage(model, list(ranks))
    linear_only = lora.coverage(model, [n for n in ranks if isinstance(dict(model.named_modules())[n],
                                                                        torch.nn.Linear)])
    assert 0.09 < linear_only < 0.1 and share > 0.9
