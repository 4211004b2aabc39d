"""The ACE-Step family's task: the trainer's flow matching, a validation loss that is the same
every time, generation that is the same for the same seed, and the seed trainer's LoRA targets."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from trainables.acestep import flow, generation
from trainables.acestep.family import AceStepBase, AceStepFamily
from trainables.acestep.latent import MelLatent
from trainables.acestep.model import TextToMusic

SMALL = {"transformer": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                         "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "patch_size": 2,
                         "sliding_window": 8},
         "text": {"dim": 32, "layers": 1, "heads": 2}}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A converted embedded corpus of 5 short tech-house songs (4 train, 1 valid)."""
    import os

    from trainables.acestep.corpus import embedded_dataset

    home = tmp_path_factory.mktemp("home")
    old = os.environ.get("RANKHOUSE_HOME")
    os.environ["RANKHOUSE_HOME"] = str(home)
    try:
        return embedded_dataset({"preset": "techhouse", "songs": 5, "seconds": 6.0, "seed": 3})
    finally:
        os.environ.pop("RANKHOUSE_HOME") if old is None else os.environ.__setitem__("RANKHOUSE_HOME", old)


def small_base(seed: int = 0) -> AceStepBase:
    torch.manual_seed(seed)
    latent = MelLatent()
    model = TextToMusic(latent.n_mels, **SMALL).eval()
    return AceStepBase(model=model, identity={"name": "scratch", "sha256": None}, latent=latent)


def config(root, **data) -> dict:
    return {"data": {"root": str(root), "valid": 0.2, "seconds": 2.0, "tags": "real", **data},
            "train": {"shift": 3.0, "cond_dropout": 0.15}}


def test_noise_levels_follow_the_trainers_shifted_logit_normal():
    sigma = flow.train_sigmas(np.random.default_rng(0).standard_normal(40_000), 3.0)
    assert 0 < sigma.min() and sigma.max() <= 1
    assert np.median(sigma) == pytest.approx(0.75, abs=0.01)  # s = 0.5 shifted by 3: 1.5 / 2
    grid = flow.shifted(1 - np.arange(1000) / 1000, 3.0).astype(np.float32)
    assert np.isin(sigma, grid).all()  # on the trainer's 1000-step grid
    fixed = flow.valid_sigmas(3.0).numpy()
    assert len(fixed) == flow.QUANTILES and (np.diff(fixed) > 0).all()
    assert fixed[3] < 0.75 < fixed[4]  # symmetric quantiles around the median


def test_loss_is_the_preconditioned_clean_latent_error():
    """noisy - sigma * v against the clean latent: a model that predicts noise - clean scores 0."""
    clean, noise = torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    exact = lambda noisy, sigma, tokens, cond=None: noise - clean
    assert flow.loss(exact, clean, None, torch.tensor([0.3, 0.9]), noise).abs().max() < 1e-6
    zero = lambda noisy, sigma, tokens, cond=None: torch.zeros_like(noisy)
    got = flow.loss(zero, clean, None, torch.tensor([0.5, 0.5]), noise)
    assert torch.allclose(got, (0.25 * (noise - clean) ** 2).flatten(1).mean(1))


def test_two_evaluations_of_one_model_are_identical(corpus):
    family, base = AceStepFamily(), small_base()
    cfg = config(corpus)
    valid = family.task.open(cfg, base, "valid")
    first = family.task.evaluate(base.model, valid, cfg, base, torch.device("cpu"))
    assert family.task.evaluate(base.model, valid, cfg, base, torch.device("cpu")) == first
    assert set(first) == {"valid/loss", "valid/fm_loss", "valid/cond_gain"}
    other = family.task.evaluate(small_base(seed=1).model, valid, cfg, base, torch.device("cpu"))
    assert other["valid/fm_loss"] != first["valid/fm_loss"]  # it does depend on the model


def test_crops_resume_where_they_were_and_shuffled_tags_are_never_a_songs_own(corpus):
    family, base = AceStepFamily(), small_base()
    cfg = config(corpus)
    train = family.task.open(cfg, base, "train")
    crops = family.task.batches(train, cfg, base, seed=4)
    crops.sample(3)
    state = crops.state()
    a = crops.sample(5)
    crops.set_state(state)
    b = crops.sample(5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    clean, tokens, sigma, noise = a
    assert clean.shape == (5, round(2.0 * base.latent.fps), 64) and noise.shape == clean.shape
    shuffled = family.task.batches(train, config(corpus, tags="shuffled"), base, seed=4)
    for song, given in zip(train, shuffled.prompts):
        assert not np.array_equal(song.prompt, given)
    assert sorted(t.tobytes() for t in shuffled.prompts) == sorted(s.prompt.tobytes() for s in train)


@pytest.fixture(scope="module")
def generic(tmp_path_factory) -> dict:
    """The techhouse space's trial config on 10 rendered generic songs of 10 s (8 train, 2
    valid), whose prompts the embedded base has learnt to listen to: 3 short epochs."""
    import os
    from pathlib import Path

    from platform import preflight, spaces

    overrides = ["data.embedded.preset=generic", "data.embedded.songs=10", "data.embedded.seconds=10.0",
                 "data.embedded.seed=5", "train.epochs=3", "train.steps_per_epoch=20", "train.batch_size=8",
                 "optim.lr=3e-3"]
    old = os.environ.get("RANKHOUSE_HOME")
    os.environ["RANKHOUSE_HOME"] = str(tmp_path_factory.mktemp("home"))
    try:
        study = spaces.load(Path(__file__).parents[1] / "search_spaces" / "acestep_techhouse.yaml", overrides)
        return preflight.resolve_data(study)
    finally:
        os.environ.pop("RANKHOUSE_HOME") if old is None else os.environ.__setitem__("RANKHOUSE_HOME", old)


def cond_gain_after_training(cfg: dict, tags: str) -> float:
    from trainables import loop, schema

    gains = []
    loop.train(loop.complete(schema.overlay(cfg, {"data": {"tags": tags}})),
               lambda metrics, folder: gains.append(metrics["valid/cond_gain"]))
    return gains[-1]


def test_an_adapter_trained_on_shuffled_tags_does_not_gain_cond_gain(generic):
    """Each song's tags another song's: the prompt says nothing of the audio, so the adapter
    learns to listen less than the base did, where one on the real tags listens more."""
    family = AceStepFamily()
    base = family.build_base({"base": "embedded"})
    valid = family.task.open(generic, base, "valid")
    before = family.task.evaluate(base.model, valid, generic, base, torch.device("cpu"))["valid/cond_gain"]
    shuffled = cond_gain_after_training(generic, "shuffled")
    real = cond_gain_after_training(generic, "real")
    assert before > 0.005  # the base does listen to these prompts
    assert shuffled < before, (before, shuffled)
    assert real > shuffled + 0.003, (before, shuffled, real)


def test_generation_is_the_same_for_the_same_seed(tmp_path):
    base = small_base()
    args = (["tech house", "126 bpm", "kick"], 2.0, base.latent, 3.0, 4, 3.0)
    a = generation.write_clip(base.model, *args, 0, tmp_path / "a.wav")
    b = generation.write_clip(base.model, *args, 0, tmp_path / "b.wav")
    c = generation.write_clip(base.model, *args, 1, tmp_path / "c.wav")
    assert a.read_bytes() == b.read_bytes() and a.read_bytes() != c.read_bytes()
    info = sf.info(str(a))
    assert info.samplerate == 22050 and info.duration == pytest.approx(2.0, abs=0.05)
    assert (tmp_path / "a.png").stat().st_size > 1000


def test_lora_targets_are_the_seed_trainers_and_start_as_the_base():
    from trainables.lora import LoraSpec

    family, base = AceStepFamily(), small_base()
    model, _ = family.adapt(base, {})
    adapted, ranks = family.apply_lora(model, LoraSpec(rank=4, alpha=8.0))
    names = [n for n, m in adapted.named_modules() if hasattr(m, "lora_A") and len(getattr(m, "lora_A", {}))]
    # 2 layers x (self + cross attention) x (to_q, to_k, to_v, to_out.0)
    assert len(names) == 16 == len(ranks) and {n.rsplit(".", 1)[-1] for n in names} == {"to_q", "to_k", "to_v", "0"}
    assert all(".to_out.0" in n or n.endswith(("to_q", "to_k", "to_v")) for n in names)
    g = torch.Generator().manual_seed(0)
    x, sigma = torch.randn(1, 20, 64, generator=g), torch.tensor([0.5])
    tokens = torch.zeros(1, 16, 4, dtype=torch.long)
    tokens[0, 0, 0] = 7
    with torch.no_grad():
        assert torch.allclose(adapted(x, sigma, tokens), base.model(x, sigma, tokens), atol=1e-6)


def test_the_embedded_base_denoises_far_better_than_predicting_zero(corpus):
    from trainables.acestep.task import ZeroVelocity

    family = AceStepFamily()
    base = family.build_base({"base": "embedded"})
    cfg = config(corpus, seconds=5.0)
    valid = family.task.open(cfg, base, "train") + family.task.open(cfg, base, "valid")
    ours = family.task.evaluate(base.model, valid, cfg, base, torch.device("cpu"))
    zero = family.task.evaluate(ZeroVelocity(64), valid, cfg, base, torch.device("cpu"))
    assert ours["valid/fm_loss"] < 0.5 * zero["valid/fm_loss"], (ours, zero)


def generate_cli(*args: str):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-m", "platform.generate", *args], cwd=root, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("change, expected", [
    (("--prompt", " , "), "--prompt ' , ': no tags"),
    (("--seconds", "0"), "--seconds 0: give a length between 0 and 600 seconds"),
    (("-o", "OUT/x.mp3"), "-o OUT/x.mp3: the output is a WAV file; name it .wav"),
    (("-o", "OUT/no/x.wav"), "OUT/no/x.wav: no folder OUT/no; create it first"),
    (("--model", "OUT/no-adapter"), "--model OUT/no-adapter: no such folder"),
])
def test_generate_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path, capsys, change, expected):
    # in this process, through the entry point's own error handling (the command's start-up
    # is what the clip test below runs as a subprocess)
    from platform import cli, generate

    args = {"--model": "embedded", "--prompt": "tech house, kick", "--seconds": "2", "-o": "OUT/x.wav"}
    args.update(dict(zip(change[::2], change[1::2])))
    with pytest.raises(SystemExit) as exit_:
        cli.run(generate.main, [str(v).replace("OUT", str(tmp_path)) for kv in args.items() for v in kv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rankhouse: error: " + expected.replace("OUT", str(tmp_path)))
    assert [p.name for p in tmp_path.iterdir() if p.suffix in (".wav", ".png")] == []


def test_generate_from_the_embedded_base_writes_a_clip_and_its_image(tmp_path):
    proc = generate_cli("--model", "embedded", "--prompt", "tech house, 126 bpm, kick, hihat", "--seconds", "2",
                        "--steps", "4", "-o", str(tmp_path / "a.wav"), "--image", str(tmp_path / "a.png"))
    assert proc.returncode == 0, proc.stderr
    assert sf.info(str(tmp_path / "a.wav")).duration == pytest.approx(2.0, abs=0.05)
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a.wav"]  # no temporary files left
