"""A tiny but real Stable Diffusion pipeline, built from configs, for tests and offline CPU runs.

``build_tiny_stable_diffusion(path)`` writes a diffusers folder (``model_index.json``, ``unet/``,
``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) that loads with
``StableDiffusionPipeline.from_pretrained(path)`` and with the prompt processor's
``subfolder="tokenizer" / "text_encoder"`` loading, exactly like a downloaded checkpoint. Nothing is
fetched from a model hub: the weights are random (seeded), the tokenizer vocabulary is written here.

What is real and what is small:

- UNet: ``UNet2DConditionModel`` with two cross-attention down/up blocks, 32/64 channels.
- VAE: ``AutoencoderKL`` with four blocks, so it downsamples by 8 like SD's VAE (512 px -> 64 latents).
- Scheduler: ``DDIMScheduler`` with Stable Diffusion 2.1-base's configuration.
- Text encoder: transformers ``CLIPTextModel`` (hidden size 32, 2 layers, 77 positions).
- Tokenizer: transformers ``CLIPTokenizer`` over a byte-level vocabulary (every one of the 256 byte
  symbols, with and without the ``</w>`` word end, plus a few merges), so any text tokenizes without
  unknown tokens. ``model_max_length`` is 77 and the pad token is ``<|endoftext|>``, as in the
  CLIP ViT-L/14 tokenizer of SD 1.x (SD 2.x's OpenCLIP tokenizer pads with ``!``; either works for
  the prompt processor, which pads to ``max_length``).

Console entry: ``lucid-build-tiny-sd PATH [--seed N]``.
"""
import argparse
import contextlib
import json
import os
import tempfile

import torch

# Stable Diffusion 2.1-base's DDIM scheduler configuration (scheduler/scheduler_config.json).
SD21_BASE_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)

TEXT_MAX_LENGTH = 77
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
WORD_END = "</w>"

# Words that get whole-word merges, so the tokenizer exercises BPE merging on view prompts.
_MERGED_WORDS = ("a", "of", "view", "side", "front", "back", "backside", "overhead", "the")


def _byte_symbols():
    """The 256 printable symbols byte-level BPE uses for the bytes 0..255 (GPT-2/CLIP convention).

    Printable Latin-1 bytes stand for themselves; the others (control characters, space, ...) are
    shifted to code points from 256 upwards, in byte order.
    """
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    symbols = {}
    shifted = 0
    for byte in range(256):
        if byte in keep:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + shifted)
            shifted += 1
    return [symbols[b] for b in range(256)]


def _word_merges(word):
    """Left-to-right merges that build ``word + "</w>"`` from its characters."""
    if len(word) < 2:
        return []
    merges = []
    current = word[0]
    for i, char in enumerate(word[1:], start=1):
        piece = char + WORD_END if i == len(word) - 1 else char
        merges.append((current, piece))
        current = current + piece
    return merges


def tiny_clip_vocabulary():
    """``(vocab, merges)`` of the tiny CLIP tokenizer, laid out like CLIP's: byte symbols, the same
    with ``</w>``, merged pieces, then the start/end-of-text tokens."""
    symbols = _byte_symbols()
    tokens = symbols + [s + WORD_END for s in symbols]
    merges = []
    for word in _MERGED_WORDS:
        for pair in _word_merges(word):
            if pair not in merges:
                merges.append(pair)
    for left, right in merges:
        if left + right not in tokens:
            tokens.append(left + right)
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    return vocab, merges


def write_vocabulary_files(folder):
    """Write the tiny vocabulary as CLIP's ``vocab.json`` and ``merges.txt`` into ``folder``."""
    vocab, merges = tiny_clip_vocabulary()
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.writelines(f"{left} {right}\n" for left, right in merges)


def build_tiny_tokenizer():
    """A real ``CLIPTokenizer`` read from a vocab.json / merges.txt pair written to a temp folder."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="lucid-tiny-tokenizer-") as folder:
        write_vocabulary_files(folder)
        tokenizer = CLIPTokenizer.from_pretrained(
            folder,
            model_max_length=TEXT_MAX_LENGTH,
            bos_token=BOS_TOKEN,
            eos_token=EOS_TOKEN,
            unk_token=EOS_TOKEN,
            pad_token=EOS_TOKEN,
        )
    return tokenizer


@contextlib.contextmanager
def _seeded(seed):
    """Seed torch's global generator (module initialisers use it) without disturbing the caller's."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_tiny_components(seed=0, text_hidden_size=32, unet_channels=(32, 64), vae_channels=(8, 16, 32, 32)):
    """The pipeline's components as objects: ``dict(vae, text_encoder, tokenizer, unet, scheduler)``.

    Each model is initialised under its own seed derived from ``seed``, so the weights are a
    function of ``seed`` alone (and changing one model's shape leaves the others' weights alone).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tiny_tokenizer()

    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=text_hidden_size,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TEXT_MAX_LENGTH,
        projection_dim=text_hidden_size,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with _seeded(seed):
        text_encoder = CLIPTextModel(text_config)

    with _seeded(seed + 1):
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=tuple(unet_channels),
            layers_per_block=1,
            norm_num_groups=min(32, unet_channels[0]),
            cross_attention_dim=text_hidden_size,
            attention_head_dim=4,
        )

    with _seeded(seed + 2):
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
            up_block_types=("UpDecoderBlock2D",) * len(vae_channels),
            block_out_channels=tuple(vae_channels),
            layers_per_block=1,
            norm_num_groups=min(8, vae_channels[0]),
            latent_channels=4,
            sample_size=64,
            scaling_factor=0.18215,
        )

    scheduler = DDIMScheduler(**SD21_BASE_SCHEDULER_CONFIG)

    for model in (text_encoder, unet, vae):
        model.eval()
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)


def build_tiny_stable_diffusion(path, seed=0, **component_kwargs):
    """Build the tiny pipeline and save it as a diffusers folder at ``path``; returns ``path``.

    ``component_kwargs`` go to :func:`build_tiny_components` (``text_hidden_size``,
    ``unet_channels``, ``vae_channels``). There is no safety checker or feature extractor.
    """
    from diffusers import StableDiffusionPipeline

    path = str(path)
    components = build_tiny_components(seed=seed, **component_kwargs)
    pipe = StableDiffusionPipeline(
        **components,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    os.makedirs(path, exist_ok=True)
    pipe.save_pretrained(path, safe_serialization=True)
    # transformers 5 saves only tokenizer.json; SD checkpoints (and transformers 4's slow
    # CLIPTokenizer) also carry vocab.json + merges.txt, so write them too.
    tokenizer_dir = os.path.join(path, "tokenizer")
    if not os.path.exists(os.path.join(tokenizer_dir, "vocab.json")):
        write_vocabulary_files(tokenizer_dir)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="lucid-build-tiny-sd",
        description=(
            "Write a tiny, randomly initialised Stable Diffusion pipeline (diffusers format) to PATH. "
            "Point pretrained_model_name_or_path (prompt processor and guidance) at it to run "
            "offline on a CPU."
        ),
    )
    parser.add_argument("path", help="output folder (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    args = parser.parse_args(argv)
    path = build_tiny_stable_diffusion(args.path, seed=args.seed)
    print(f"Tiny Stable Diffusion pipeline written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
