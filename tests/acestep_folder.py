"""A tiny ACE-Step folder in diffusers' layout, as ``AceStepPipeline.save_pretrained`` writes a
real one (model_index.json; vae, text_encoder, tokenizer, transformer, condition_encoder and
scheduler folders), with random weights: what tests read where a user gives the real one."""

from __future__ import annotations

from pathlib import Path

WORDS = ["tech", "house", "126", "bpm", "kick", "hihat", "a", "minor", "#", "instruction", "caption", "metas",
         "languages", "lyric", "en", "-", "duration", "seconds", "n/a", "keyscale", "timesignature", ":",
         *map(str, range(256))]
LATENT = 8  # the VAE's latent channels


def write_tiny_pipeline(folder: Path, seed: int = 0) -> Path:
    import torch
    from diffusers import (AceStepPipeline, AceStepTransformer1DModel, AutoencoderOobleck,
                           FlowMatchEulerDiscreteScheduler)
    from diffusers.pipelines.ace_step.modeling_ace_step import AceStepConditionEncoder
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "<|endoftext|>", *WORDS])}
    words = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]", pad_token="[PAD]",
                                        eos_token="<|endoftext|>")
    text_encoder = Qwen3Model(Qwen3Config(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                          head_dim=16, max_position_embeddings=512))
    attention = {"num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16, "sliding_window": 8}
    condition_encoder = AceStepConditionEncoder(hidden_size=32, intermediate_size=64, text_hidden_dim=32,
                                                timbre_hidden_dim=LATENT, num_lyric_encoder_hidden_layers=1,
                                                num_timbre_encoder_hidden_layers=1, **attention)
    transformer = AceStepTransformer1DModel(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            in_channels=3 * LATENT, audio_acoustic_hidden_dim=LATENT, patch_size=2,
                                            encoder_hidden_size=32, **attention)
    # 48 kHz stereo to LATENT channels (the encoder gives mean and scale) at 25 frames a second, as
    # ACE-Step 1.5's VAE (1920x down)
    vae = AutoencoderOobleck(encoder_hidden_size=2 * LATENT, downsampling_ratios=[8, 8, 30], channel_multiples=[1, 2, 2],
                             decoder_channels=4, decoder_input_channels=LATENT, audio_channels=2, sampling_rate=48000)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0)
    pipe = AceStepPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
                           condition_encoder=condition_encoder, scheduler=scheduler)
    pipe.save_pretrained(folder)
    return Path(folder)
