"""MSST checkpoints compute what MSST computes: checkpoints and outputs written by MSST's own
code (``tests/fixtures/msst/``, see its README) loaded through the family as a user would
(``model.base`` + ``model.config``), and MSST's full configs building state dicts of MSST's size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainables import bs_roformer
from trainables.family import get_family

FIXTURES = Path(__file__).parent / "fixtures" / "msst"
ARCHS = ["bs_roformer", "mel_band_roformer"]
# (keys, elements) of MSST's configs/config_musdb18_*.yaml, measured with MSST's code at ccc011a;
# the fixtures' YAMLs are those files with dim, depth and mlp_expansion_factor made smaller
FULL = {"bs_roformer": ({"dim": 192, "depth": 6, "mlp_expansion_factor": 4}, 567, 24_591_660),
        "mel_band_roformer": ({"dim": 192, "depth": 8, "mlp_expansion_factor": 4}, 732, 69_102_916)}


def msst_output(arch: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored input and MSST's output in the family's shape convention, (B, S, C, T):
    MSST squeezes a single stem."""
    io = load_file(str(FIXTURES / f"{arch}_io.safetensors"))
    out = io["output"]
    return io["input"], out.unsqueeze(1) if out.ndim == 3 else out


@pytest.mark.parametrize("arch", ARCHS)
def test_an_msst_checkpoint_computes_msst_output(arch):
    base = get_family("bs_roformer").build_base({"base": str(FIXTURES / f"{arch}.ckpt"),
                                                 "config": str(FIXTURES / f"{arch}.yaml")})
    assert base.config["arch"] == arch and base.sources == ["vocals"] and base.samplerate == 44100
    mix, expected = msst_output(arch)
    with torch.no_grad():
        out = base.model.eval()(mix)
    assert out.shape[:3] == expected.shape[:3] and out.shape[-1] == mix.shape[-1]
    # Mel-Band RoFormer: MSST returns a multiple of the hop; the family returns every input sample
    out = out[..., :expected.shape[-1]]
    diff = float((out - expected).abs().max())
    assert diff <= 1e-5 * float(expected.abs().max()), f"max |diff| {diff:.3g}"


@pytest.mark.parametrize("arch", ARCHS)
def test_every_msst_key_loads_without_translation(arch):
    state = torch.load(str(FIXTURES / f"{arch}.ckpt"), map_location="cpu", weights_only=True)
    base = get_family("bs_roformer").build_base({"base": str(FIXTURES / f"{arch}.ckpt"),
                                                 "config": str(FIXTURES / f"{arch}.yaml")})
    mine = base.model.state_dict()
    assert list(mine) == list(state)
    assert all(torch.equal(mine[k], v) for k, v in state.items())


@pytest.mark.parametrize("arch", ARCHS)
def test_msst_full_config_builds_msst_state_dict_size(arch):
    info = bs_roformer.read_msst_config(FIXTURES / f"{arch}.yaml")
    sizes, keys, elements = FULL[arch]
    with torch.device("meta"):
        model = bs_roformer.new_model(arch, {**info["kwargs"], **sizes})
    state = model.state_dict()
    assert (len(state), sum(v.numel() for v in state.values())) == (keys, elements)


def test_zero_dc_is_msst_default_and_can_be_switched_off():
    """MSST removes each stem's DC bin before the inverse STFT; older MSST code did not."""
    info = bs_roformer.read_msst_config(FIXTURES / "bs_roformer.yaml")
    state = torch.load(str(FIXTURES / "bs_roformer.ckpt"), map_location="cpu", weights_only=True)
    mix, expected = msst_output("bs_roformer")
    with_dc = bs_roformer.new_model("bs_roformer", {**info["kwargs"], "zero_dc": False})
    with_dc.load_state_dict(state)
    with torch.no_grad():
        out = with_dc.eval()(mix)
    assert float((out - expected).abs().max()) > 1e-3 * float(expected.abs().max())
