"""Text-to-music, the task of the ACE-Step family: prompt tags in, music out, trained by flow
matching (``flow.py``) on mel clips of a converted dataset (``dataset.py``).

Metrics: ``valid/fm_loss``, the flow-matching loss on the valid songs' clips at fixed noise
levels with fixed noise (lower is better; the default objective), and ``valid/cond_gain``, the
same loss with every prompt emptied minus the loss with the real prompts: above 0 the model
uses what the tags say. The baseline ``zero`` predicts no velocity (the noisy latent is its
guess of the clean one): a model that cannot denoise scores there.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
from torch import nn

from trainables.acestep import dataset, flow, tags
from trainables.acestep.latent import MelLatent
from trainables.data.cache import default_cache_dir
from trainables.errors import RankhouseError
from trainables.schema import Key
from trainables.task import Metric, ProgressFactory, Task, no_progress

EMBEDDED = {
    "preset": Key("techhouse", "the render's preset: techhouse or generic"),
    "songs": Key(40, "songs rendered (train + valid)", rule=lambda v: v >= 2, expect=">= 2"),
    "seconds": Key(20.0, "seconds per song", type=float, rule=lambda v: v >= 3, expect=">= 3"),
    "seed": Key(0, "the render's seed"),
}
PREVIEW_STEPS, PREVIEW_GUIDANCE = 20, 3.0


class ZeroVelocity(nn.Module):
    """The baseline that cannot denoise: it predicts no velocity for any input."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def condition(self, tokens: torch.Tensor) -> None:
        return None

    def forward(self, noisy, sigma, tokens, condition=None):
        return torch.zeros_like(noisy)


def latent_and_prompt(info: dict) -> tuple:
    """The latent and the prompt function an adapter was trained with, read from its manifest (for
    its holdout): the fixed mel latent and word tokens, or its ACE-Step folder's VAE and condition."""
    if "vae" not in info["latent"]:
        return MelLatent(**info["latent"]), tags.tokens
    from trainables.acestep import pipeline

    folder = Path(info["base_folder"])
    if not pipeline.is_folder(folder):
        raise RankhouseError(f"{folder}: the ACE-Step folder this adapter was trained on is not there")
    pipe = pipeline.load(folder)
    model = pipeline.PipelineTextToMusic(pipe, folder)
    return pipeline.VaeLatent(pipe, info["latent"]["vae"]), lambda t: model.prompt(t, float(info["seconds"]))


def scores(model: nn.Module, clips: list, shift: float, device: torch.device) -> dict[str, float]:
    real = flow.fixed_loss(model, clips, shift, device)
    empty = flow.fixed_loss(model, clips, shift, device, empty_tags=True)
    return {"fm_loss": real, "cond_gain": empty - real}


class TextToMusic(Task):
    """A dataset is one folder written by ``python -m platform.data acestep`` (ACE-Step's
    trainer's input); its valid split is a share of its songs (``dataset.split_keys``)."""

    name = "text_to_music"
    score = "fm_loss"
    score_label = "flow-matching loss"
    score_metric = Metric("min", "", "the flow-matching loss at fixed noise levels and noise, mean over holdout "
                                     "clips; min_gain is in loss units")
    default_objective = "valid/fm_loss"
    split_folders = False  # one converted dataset; the valid split is chosen by key
    options = {
        "data": {
            "embedded": EMBEDDED,
            "valid": Key(0.2, "share of the songs in the valid split (by key, see docs/acestep.md)", type=float,
                         rule=lambda v: 0 < v < 1, expect="a share between 0 and 1"),
            "seconds": Key(5.0, "seconds per training crop and per validation clip", type=float,
                           rule=lambda v: 1 <= v <= 60, expect="1 to 60 seconds"),
            "tags": Key("real", "real: each song's own tags; shuffled: another song's (a control that cannot "
                                "learn the tags)", rule=lambda v: v in ("real", "shuffled"), expect="real or shuffled"),
        },
        "train": {
            "shift": Key(flow.SHIFT, "the scheduler's shift of the noise levels (the trainer's --shift)", type=float,
                         rule=lambda v: v > 0, expect="> 0"),
            "cond_dropout": Key(0.15, "share of training prompts emptied (classifier-free guidance; the trainer's "
                                      "15%)", type=float, rule=lambda v: 0 <= v < 1, expect="0 <= share < 1"),
        },
        "registry": {"holdout": {"embedded": {**EMBEDDED, "songs": Key(8, "songs rendered"),
                                              "seed": Key(1000, "the render's seed (no search uses it)")},
                                 "max_seconds": Key(None, "score the clips of at most this much of each song "
                                                          "(null: all)", type=float, nullable=True,
                                                    rule=lambda v: v > 0, expect="seconds > 0 or null")}},
    }

    def metrics(self, cfg: dict) -> dict[str, Metric]:
        return {"train/loss": Metric("min", "", "the flow-matching loss of training crops (random noise levels)"),
                "valid/loss": Metric("min", "", "the same as valid/fm_loss"),
                "valid/fm_loss": Metric("min", "", "flow-matching loss on valid clips at 8 fixed noise levels, "
                                                   "fixed noise per clip"),
                "valid/cond_gain": Metric("max", "", "valid/fm_loss with every prompt emptied minus with the real "
                                                     "prompts (> 0: the model uses the tags)")}

    def embedded(self, section: dict, progress: ProgressFactory = no_progress) -> Path:
        from trainables.acestep.corpus import embedded_dataset

        return embedded_dataset(section, progress(f"render acestep {section['preset']}"))

    def base_study(self, preset: str) -> dict:
        corpus = {"generic": {"songs": 160, "seed": 1}, "techhouse": {"songs": 40, "seed": 0}}[preset]
        return {"data": {"embedded": {"preset": preset, "seconds": 20.0, **corpus}}}

    def check(self, cfg: dict, progress: ProgressFactory = no_progress) -> None:
        from trainables.acestep import convert

        root = Path(cfg["data"]["root"])
        rows = convert.load(root)
        missing = [r["filename"] for r in rows if not Path(r["filename"]).is_file()]
        if missing:
            raise RankhouseError(f"{root}: {len(missing)} song file(s) missing, e.g. {missing[0]}; convert the "
                                 "songs again where they now are")
        split = dataset.split_keys([r["keys"] for r in rows], float(cfg["data"]["valid"]))
        if not split["train"]:
            raise RankhouseError(f"{root}: {len(rows)} song(s), none left to train on; add songs or lower data.valid")
        print(f"{root}: {len(split['train'])} train and {len(split['valid'])} valid songs", file=sys.stderr)

    def prepare(self, cfg: dict, base, progress: ProgressFactory = no_progress) -> None:
        for split in ("train", "valid"):  # decode once here, not in every trial
            self.open(cfg, base, split, progress)

    def open(self, cfg: dict, base, split: str, progress: ProgressFactory = no_progress) -> list[dataset.Song]:
        d = cfg["data"]
        cache_dir = Path(d["cache_dir"]) if d.get("cache_dir") else default_cache_dir(Path(d["root"]))
        prompt = lambda t: base.model.prompt(t, float(d["seconds"]))
        return dataset.open_split(Path(d["root"]), split, float(d["valid"]), base.latent, prompt, cache_dir,
                                  progress(f"decode {split}"))

    def batches(self, data: list[dataset.Song], cfg: dict, base, seed: int) -> dataset.Crops:
        return dataset.Crops(data, base.latent.frames(float(cfg["data"]["seconds"])),
                             base.latent.silence, float(cfg["train"]["shift"]),
                             float(cfg["train"]["cond_dropout"]), seed, cfg["data"]["tags"] == "shuffled")

    def loss(self, model: nn.Module, batch: tuple, cfg: dict) -> torch.Tensor:
        clean, prompts, sigma, noise = batch
        return flow.loss(model, clean.float(), prompts, sigma.float(), noise.float()).mean()

    @staticmethod
    def _clips(data: list[dataset.Song], seconds: float, latent, max_seconds: float | None) -> list:
        """The fixed clips of ``data``'s songs (of their first ``max_seconds``, if given)."""
        if max_seconds:
            keep = max(1, int(round(max_seconds * latent.fps)))
            data = [dataclasses.replace(s, latent=s.latent[:keep]) for s in data]
        return dataset.valid_clips(data, latent.frames(seconds), latent.silence)

    def evaluate(self, model: nn.Module, data: list[dataset.Song], cfg: dict, base, device: torch.device) -> dict:
        model.eval()
        clips = self._clips(data, float(cfg["data"]["seconds"]), base.latent, cfg["train"].get("valid_max_seconds"))
        s = scores(model, clips, float(cfg["train"]["shift"]), device)
        return {"valid/loss": s["fm_loss"], "valid/fm_loss": s["fm_loss"], "valid/cond_gain": s["cond_gain"]}

    def baselines(self, cfg: dict, base, valid: list[dataset.Song],
                  progress: ProgressFactory = no_progress) -> dict[str, dict]:
        zero = ZeroVelocity(base.latent.channels)
        return {"zero": self.evaluate(zero, valid, cfg, base, torch.device("cpu"))}

    def preview(self, model: nn.Module, data: list[dataset.Song], cfg: dict, base, metrics: dict, folder: Path,
                device: torch.device) -> bool:
        """Two clips generated for the first two valid songs' prompts (seeds 0 and 1), as WAV,
        with their mel images."""
        from trainables.acestep import generation

        for i in range(2):
            song = data[i % len(data)]
            generation.write_clip(model, song.tags, float(cfg["data"]["seconds"]), base.latent,
                                  float(cfg["train"]["shift"]), PREVIEW_STEPS, PREVIEW_GUIDANCE, i,
                                  folder / f"clip_{i}.wav", device)
        return True

    def manifest(self, cfg: dict, base) -> dict:
        return {"latent": base.latent.spec, "shift": float(cfg["train"]["shift"]),
                "seconds": float(cfg["data"]["seconds"]), "data_root": str(Path(cfg["data"]["root"]).resolve()),
                "valid": float(cfg["data"]["valid"]),
                "base_folder": base.config.get("folder")}

    def example_input(self, info: dict, seconds: float = 2.0) -> tuple[torch.Tensor, ...]:
        """A noisy clip of ``seconds`` at three noise levels, with one prompt."""
        latent, prompt = latent_and_prompt(info)
        noisy = torch.randn((3, latent.frames(seconds), latent.channels), generator=torch.Generator().manual_seed(0))
        given = torch.from_numpy(prompt(["tech house", "126 bpm", "kick", "hihat"]))
        return noisy, torch.tensor([0.2, 0.5, 0.9]), given[None].expand(3, *given.shape)

    def outputs(self, info: dict) -> dict:
        return info["latent"]

    def open_holdout(self, info: dict, root: Path, split: str,
                     progress: ProgressFactory = no_progress) -> list[dataset.Song]:
        """Every song of a holdout dataset; of the study's own dataset, its ``split`` by the rule
        the search split it by."""
        own = Path(root).resolve() == Path(info["data_root"])
        latent, prompt = latent_and_prompt(info)
        return dataset.open_split(root, split if own else "valid", float(info["valid"]) if own else 1.0, latent,
                                  prompt, default_cache_dir(root), progress("decode holdout"))

    def score_holdout(self, models: dict[str, nn.Module], data: list[dataset.Song], info: dict,
                      max_seconds: float | None, workers: int | None,
                      progress: ProgressFactory = no_progress) -> dict[str, dict[str, float]]:
        latent = latent_and_prompt(info)[0]
        clips = self._clips(data, float(info["seconds"]), latent, max_seconds)
        return {label: scores(model, clips, float(info["shift"]), torch.device("cpu")) for label, model in models.items()}
