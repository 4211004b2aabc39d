"""The structure task: targets, fixed peak picking and mir_eval scores, the heads' losses, the
family's LoRA, and a model that must hear the structure to beat the template baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from trainables import lora, loop
from trainables.family import get_family
from trainables.structure import annotations, baselines, corpus, dataset, metrics
from trainables.structure.model import OUTPUTS, StructureNet, head_slices
from trainables.structure.task import WEIGHTS, losses, split_outputs


def test_event_targets_are_widened_and_labels_follow_the_sections():
    t = dataset.events(np.array([1.0, 2.02]), 100, 25.0)
    assert t[25] == 1.0 and t[24] == t[26] == 0.5 and t[50] == 1.0 and t[49] == t[51] == 0.5
    assert t.sum() == 4.0


def test_peak_picking_is_fixed_and_keeps_one_event_per_radius():
    act = np.zeros(250)
    act[[50, 52, 150]] = [0.9, 0.8, 0.4]
    act[200] = 0.2  # under the threshold
    assert list(metrics.peaks(act, 25.0, metrics.RADIUS["boundary"])) == [2.0, 6.0]


def test_boundary_f_leaves_out_the_track_edges_and_uses_its_window():
    ref = np.array([10.0, 30.0])
    assert metrics.boundary_f(ref, np.array([0.0, 10.2, 30.1, 60.0]), 60.0, 0.5) == 1.0  # 0 and 60: edges
    assert metrics.boundary_f(ref, np.array([11.0, 31.0]), 60.0, 0.5) == 0.0
    assert metrics.boundary_f(ref, np.array([11.0, 31.0]), 60.0, 3.0) == 1.0
    assert metrics.boundary_f(ref, np.array([]), 60.0, 3.0) == 0.0


def test_a_heads_weight_of_zero_switches_its_loss_off():
    torch.manual_seed(0)
    logits = torch.randn(2, 40, OUTPUTS, requires_grad=True)
    targets = {"boundary": torch.zeros(2, 40), "beat": torch.zeros(2, 40), "downbeat": torch.zeros(2, 40),
               "energy": torch.rand(2, 40, 3), "label": torch.randint(0, 5, (2, 40))}
    targets["boundary"][:, 10] = 1.0
    losses(logits, targets, torch.ones(2, 40), {**WEIGHTS, "label": 0.0}).backward()
    s = head_slices()
    assert logits.grad[..., s["label"]].abs().sum() == 0
    for head in ("boundary", "beat", "downbeat", "energy"):
        assert logits.grad[..., s[head]].abs().sum() > 0
    probs = split_outputs(logits.detach())
    assert probs["boundary"].shape == (2, 40) and probs["energy"].shape == (2, 40, 3)
    assert 0 <= probs["beat"].min() and probs["beat"].max() <= 1 and probs["label"].shape == (2, 40, 5)


def test_the_model_emits_one_frame_per_hop_and_its_front_end_is_inside():
    model = StructureNet()
    out = model(torch.randn(2, 22050 * 4 + 100))
    assert out.shape == (2, (22050 * 4 + 100) // 882, OUTPUTS)
    noise = 0.1 * torch.randn(1, 22050 * 2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(model(3.0 * noise), model(noise), atol=1e-4)  # log-mel centred per item: gain is ignored


def test_lora_reaches_the_documented_targets_and_step_zero_is_the_base():
    family = get_family("structure")
    base = family.build_base({"base": "scratch"})
    model, heads = family.adapt(base, {})
    spec = lora.LoraSpec.from_config({"rank": 4, "alpha": 8.0})
    adapted, ranks = family.apply_lora(model, spec, heads)
    assert "head" in ranks and "backbone.context.1.to_q" in ranks and "backbone.tcn.5.conv" in ranks
    assert not any(k.startswith("backbone.frontend.conv") for k in ranks)
    x = torch.randn(1, 22050 * 3)
    assert torch.equal(adapted(x), base.model(x))
    groups = family.layer_groups(base.model)
    assert set(groups) == {"frontend", "tcn", "context", "head"}


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    return corpus.render_corpus(tmp_path_factory.mktemp("structure") / "c", "techhouse", 24, (30.0, 50.0), seed=3,
                                valid=6)


def train_and_score(root: Path, steps: int, tamper=None) -> dict:
    """A scratch model trained ``steps`` steps (its crops' audio changed by ``tamper``), scored
    on the untouched valid tracks."""
    cfg = {"model": {"family": "structure", "base": "scratch"}, "data": {"root": str(root)}, "lora": None,
           "train": {"epochs": 1, "steps_per_epoch": steps, "batch_size": 8, "seed": 0},
           "optim": {"lr": 2e-3, "schedule": "constant"}}
    recipe = loop.Recipe(cfg, torch.device("cpu"))
    recipe.setup()
    if tamper is not None:
        sample = recipe.batches.sample
        recipe.batches.sample = lambda n: (tamper(sample(n)[0]), *sample(n)[1:])
    return recipe.train_epoch(0)


@pytest.mark.slow
def test_a_model_must_hear_the_audio_to_beat_the_template(small_corpus):
    """Trained on silence or on another crop's audio, the model cannot beat the template's
    boundary F@0.5s; trained on the real audio, the same recipe does. (F@3s is not the test: a
    boundary every 8 s lands within 3 s of most boundaries by chance.)"""
    split = annotations.files(small_corpus)
    cache = small_corpus / ".cache"
    train = dataset.open_split(split["train"], 22050, 882, None, cache)
    valid = dataset.open_split(split["valid"], 22050, 882, None, cache)
    template = baselines.scores(train, valid, 25.0, set(WEIGHTS))["template"]
    real = train_and_score(small_corpus, 100)
    silent = train_and_score(small_corpus, 100, tamper=lambda audio: np.zeros_like(audio))
    shuffled = train_and_score(small_corpus, 100, tamper=lambda audio: np.roll(audio, 1, axis=0))
    print({k: {m: round(v, 3) for m, v in r.items() if m.startswith("valid/")} for k, r in
           dict(template=template, real=real, silent=silent, shuffled=shuffled).items()})
    assert silent["valid/boundary_f05"] < template["valid/boundary_f05"]
    assert shuffled["valid/boundary_f05"] < template["valid/boundary_f05"]
    assert real["valid/boundary_f05"] > template["valid/boundary_f05"] + 0.1
    assert real["valid/label_acc"] > baselines.scores(train, valid, 25.0, set(WEIGHTS))["majority"]["valid/label_acc"]
