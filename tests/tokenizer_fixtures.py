"""Tiny local tokenizers and a tiny random SD3 pipeline folder, written without any download.

The tokenizers come from `ladd_jax.toy.tokenizers` (a CLIP BPE and a T5 Unigram vocabulary built from CORPUS);
`write_tiny_sd3_folder` builds a whole StableDiffusion3Pipeline with every weight random and saves it with
`save_pretrained`.
"""

from __future__ import annotations

import math
from pathlib import Path

from ladd_jax.toy.tokenizers import write_clip_tokenizer, write_t5_tokenizer

CLIP_MAX_LENGTH = 77  # SD3's CLIP tokenizers truncate and pad to 77 tokens
T5_MAX_LENGTH = 512
NUM_MERGES = 60  # a partial BPE: longer corpus words stay split into subwords, as in a real vocabulary

CORPUS = (
    "a photo of a cat sitting on the red sofa",
    "a painting of a dog in the snow, oil on canvas",
    "an astronaut riding a horse on the moon",
    "the quick brown fox jumps over the lazy dog",
    "a bowl of fruit on a wooden table in the morning light",
    "portrait of an old man with a hat, high detail",
    "a city street at night with neon signs and rain",
    "two birds on a branch, watercolor",
)


def randomize_(module, seed: int) -> None:
    """Every weight random (diffusers zero-inits adaLN and output layers): matrices N(0, 1/fan_in), so
    activations keep an O(1) scale; biases N(0, 0.1^2); norm scales 1 + N(0, 0.1^2)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim >= 2:
                p.copy_(noise / math.sqrt(math.prod(p.shape[1:])))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)


def tiny_sd3_components(folder: str | Path, seed: int = 0, with_t5: bool = True) -> dict:
    """The components of a tiny StableDiffusion3Pipeline, every weight random; tokenizers written under folder."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        T5Config,
        T5EncoderModel,
        T5TokenizerFast,
    )

    folder = Path(folder)
    tmp = folder / "_tokenizers"
    clip_vocab = write_clip_tokenizer(tmp / "clip_l", CORPUS, NUM_MERGES, max_length=CLIP_MAX_LENGTH)
    write_clip_tokenizer(tmp / "clip_g", CORPUS, NUM_MERGES, pad_token="!", max_length=CLIP_MAX_LENGTH)
    t5_dim = 96
    torch.manual_seed(seed)

    def clip(hidden: int, layers: int, act: str, k: int):
        config = CLIPTextConfig(
            vocab_size=clip_vocab,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            projection_dim=hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            max_position_embeddings=CLIP_MAX_LENGTH,
            hidden_act=act,
            # SD3's configs keep the legacy ids: eos_token_id 2 pools at the argmax of the ids (<|endoftext|>).
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
        )
        model = CLIPTextModelWithProjection(config).eval()
        randomize_(model, seed + k)
        return model

    clip_l, clip_g = clip(32, 3, "quick_gelu", 1), clip(48, 3, "gelu", 2)
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=t5_dim,
        caption_projection_dim=32,
        pooled_projection_dim=32 + 48,
        out_channels=16,
        pos_embed_max_size=16,
    ).eval()
    randomize_(transformer, seed + 3)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=1.5305,
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()
    randomize_(vae, seed + 4)
    t5 = t5_tok = None
    if with_t5:
        t5_vocab = write_t5_tokenizer(tmp / "t5", CORPUS, max_length=T5_MAX_LENGTH)
        t5 = T5EncoderModel(
            T5Config(
                vocab_size=t5_vocab + 8,  # like T5's 32128 embedding rows for 32100 tokens
                d_model=t5_dim,
                d_kv=16,
                d_ff=128,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
                relative_attention_max_distance=16,
                feed_forward_proj="gated-gelu",
            )
        ).eval()
        randomize_(t5, seed + 5)
        t5_tok = T5TokenizerFast.from_pretrained(tmp / "t5")
    return dict(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=clip_l,
        tokenizer=CLIPTokenizer.from_pretrained(tmp / "clip_l"),
        text_encoder_2=clip_g,
        tokenizer_2=CLIPTokenizer.from_pretrained(tmp / "clip_g"),
        text_encoder_3=t5,
        tokenizer_3=t5_tok,
    )


def write_tiny_sd3_folder(path: str | Path, seed: int = 0, with_t5: bool = True) -> Path:
    """A tiny random SD3 pipeline saved with `StableDiffusion3Pipeline.save_pretrained(path)`; returns path.

    Without T5, model_index.json lists text_encoder_3 and tokenizer_3 as null (diffusers then uses zeros)."""
    import shutil

    from diffusers import StableDiffusion3Pipeline

    path = Path(path)
    components = tiny_sd3_components(path, seed, with_t5)
    StableDiffusion3Pipeline(**components).save_pretrained(path)
    shutil.rmtree(path / "_tokenizers")
    return path
