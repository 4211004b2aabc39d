"""A user's ACE-Step folder as the base (diffusers' layout, read from disk only): the model does
what ``AceStepPipeline`` does with the same weights, LoRA trains its DiT alone, and a folder
that is not one is one clear line."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from acestep_folder import write_tiny_pipeline
from trainables.acestep import flow, generation, pipeline
from trainables.acestep.family import AceStepFamily
from trainables.errors import RankhouseError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_tiny_pipeline(tmp_path_factory.mktemp("ace") / "ACE-Step-tiny")


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> Path:
    """A converted dataset of 4 rendered tech-house songs of 6 s (3 train, 1 valid)."""
    from trainables.acestep.corpus import embedded_dataset

    old = os.environ.get("RANKHOUSE_HOME")
    os.environ["RANKHOUSE_HOME"] = str(tmp_path_factory.mktemp("home"))
    try:
        return embedded_dataset({"preset": "techhouse", "songs": 4, "seconds": 6.0, "seed": 3})
    finally:
        os.environ.pop("RANKHOUSE_HOME") if old is None else os.environ.__setitem__("RANKHOUSE_HOME", old)


def folder_study(*overrides: str):
    from platform import spaces

    return spaces.load(ROOT / "search_spaces" / "acestep_folder.yaml", list(overrides))


def test_sampling_without_guidance_is_the_pipelines_own(folder):
    """The same noise, two Euler steps at guidance 1: the latent AceStepPipeline generates for
    the prompt (its template, text encoder, condition encoder, silence context and timbre) is
    the one the family's model generates."""
    base = AceStepFamily().build_base({"base": str(folder)})
    frames = base.latent.frames(2.0)
    noise = torch.randn((1, frames, base.latent.channels), generator=torch.Generator().manual_seed(0))
    pipe = pipeline.load(folder.resolve())
    theirs = pipe(prompt="tech house, kick, hihat", lyrics="", audio_duration=2.0, num_inference_steps=2,
                  guidance_scale=1.0, shift=flow.SHIFT, latents=noise.clone(), output_type="latent").audios
    ours = flow.sample(base.model, torch.from_numpy(base.model.prompt(["tech house", "kick", "hihat"], 2.0))[None],
                       frames, 2, flow.SHIFT, 1.0, torch.Generator().manual_seed(0))
    assert theirs.shape == ours.shape == (1, frames, base.latent.channels)
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
    other = base.model.prompt(["deep house"], 2.0)
    assert not np.allclose(other[: len(base.model.prompt(["tech house"], 2.0))], base.model.prompt(["tech house"], 2.0))


def test_generation_writes_the_vaes_stereo_audio_the_same_for_the_same_seed(folder, tmp_path):
    base = AceStepFamily().build_base({"base": str(folder)})
    a = generation.generate(base.model, ["tech house", "kick"], 2.0, base.latent, flow.SHIFT, 3, 3.0, seed=4)
    b = generation.generate(base.model, ["tech house", "kick"], 2.0, base.latent, flow.SHIFT, 3, 3.0, seed=4)
    assert a[0].shape == (96000, 2) and np.array_equal(a[0], b[0])  # 2 s at 48 kHz, stereo
    path = generation.write_clip(base.model, ["tech house"], 2.0, base.latent, flow.SHIFT, 2, 3.0, 0,
                                 tmp_path / "clip.wav")
    assert path.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_lora_trains_the_folders_dit_alone_and_lowers_its_loss(folder, songs):
    """The shipped space for a user's folder, at test size: its preflight passes and a trial
    lowers the valid loss, with the text encoder untouched."""
    from platform import preflight
    from trainables import loop

    study = folder_study(f"model.base={folder}", f"data.root={songs}", "data.valid=0.25", "data.seconds=2.0",
                         "train.epochs=2", "train.steps_per_epoch=4", "optim.lr=1e-2", "optim.warmup=0.0",
                         "optim.schedule=constant")
    prepared = preflight.prepare(study)
    cfg = prepared.config
    assert cfg["model"]["base"] == str(folder.resolve()) and prepared.base_identity["name"] == str(folder.resolve())
    family = AceStepFamily()
    base = family.build_base(cfg["model"])
    text_side = copy.deepcopy(base.model.shared.value.text_encoder.state_dict())
    seen = []
    loop.train(loop.complete(cfg), lambda metrics, folder_: seen.append(metrics["valid/fm_loss"]))
    before = prepared.base_metrics["valid/fm_loss"]
    assert len(seen) == 2 and seen[-1] < before, (before, seen)
    after = base.model.shared.value.text_encoder.state_dict()
    assert all(torch.equal(text_side[k], after[k]) for k in text_side)  # the text side stays frozen


def test_the_folder_space_names_what_it_needs():
    with pytest.raises(RankhouseError, match=r"acestep_folder.yaml: model.base: required; give it on the command line"):
        folder_study()


def test_a_folder_that_is_not_an_ace_step_folder_is_one_clear_error(tmp_path):
    family = AceStepFamily()
    (tmp_path / "empty").mkdir()
    with pytest.raises(RankhouseError, match=r"a folder without model_index.json; give an ACE-Step folder"):
        family.build_base({"base": str(tmp_path / "empty")})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model_index.json").write_text('{"_class_name": "StableAudioPipeline"}')
    with pytest.raises(RankhouseError, match=r"a StableAudioPipeline folder; the acestep family reads AceStepPipeline"):
        family.build_base({"base": str(tmp_path / "other")})
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model_index.json").write_text('{"_class_name": "AceStepPipeline"}')
    with pytest.raises(RankhouseError, match=r"broken: not a readable ACE-Step folder"):
        family.build_base({"base": str(tmp_path / "broken")})
