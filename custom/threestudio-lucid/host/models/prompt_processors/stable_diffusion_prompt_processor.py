"""``stable-diffusion-prompt-processor``: prompts encoded by a Stable Diffusion checkpoint's CLIP text
encoder (``tokenizer/`` and ``text_encoder/`` subfolders of a diffusers folder or hub id).

As threestudio's, except:

- the encoder runs on CUDA when available, else on the CPU, moved there with ``.to(device)``
  (threestudio passes ``device_map="auto"``, which needs accelerate and a GPU to mean anything);
- prompts are padded to the tokenizer's ``model_max_length`` and never truncated, as in threestudio,
  whose encoder crashes on a longer prompt (over 77 tokens for CLIP: 75 plus start and end). Here
  every prompt is counted first and the first one too long is a one-line :class:`ConfigError` naming
  its config key (``system.prompt_processor.prompt``, ``negative_prompt`` or ``prompt_<view>``; a
  templated view prompt counts as ``prompt``), its length and the limit. The check runs on every
  construction, cached or not (so the tokenizer is loaded even when every embedding is cached), so an
  embedding cached by an older host that truncated is never reused;
- each cache file holds a compact copy of its ``[77, D]`` row (``torch.save`` of a row view would
  store the whole batch), written atomically, tagged with a fingerprint of the model's text encoder
  and tokenizer files (:func:`text_encoder_fingerprint`; a tensor attribute, so threestudio still
  reads the file as the plain tensor it writes): an entry made by another model at the same path
  (e.g. ``load/tiny-sd`` rebuilt with another seed) is recomputed, see ``base.py``;
- a folder whose ``text_encoder/`` width differs from its ``unet/`` cross-attention width is a
  one-line :class:`ConfigError` before anything is encoded;
- a checkpoint that cannot be found is a one-line :class:`ConfigError` that names
  ``pretrained_model_name_or_path`` and how to make a local one (``lucid-build-tiny-sd PATH``).
"""
import io
import json
import os

import torch

from ... import register
from ...utils.config import ConfigError
from ...utils.misc import cleanup
from ...utils.typing import *
from ....atomic_files import CACHE_HINT, write_bytes
from ....prompt_length import check_prompt_lengths, processor_prompts_by_key
from ....personalization import local_model_folder, text_encoder_fingerprint  # noqa: F401  (re-exported)
from .base import FINGERPRINT_ATTRIBUTE, PromptProcessor, hash_prompt

TOKENIZER_SUBFOLDER = "tokenizer"
TEXT_ENCODER_SUBFOLDER = "text_encoder"
CONFIG_PREFIX = "system.prompt_processor"


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _model_not_found(name: str, reason: str) -> ConfigError:
    return ConfigError(
        f"Cannot load the CLIP text encoder of pretrained_model_name_or_path='{name}' ({reason}): "
        "set system.prompt_processor.pretrained_model_name_or_path to a local diffusers folder with "
        "tokenizer/ and text_encoder/ subfolders (e.g. one made with `lucid-build-tiny-sd PATH`), "
        "or to a hub id that is in the local Hugging Face cache."
    )


def _looks_like_local_path(name: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything else that does not exist is a wrong path."""
    return (
        name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
        or os.path.isfile(name)
    )


def text_encoder_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _check_model_folder(name: str) -> None:
    if os.path.isdir(name):
        missing = [s for s in (TOKENIZER_SUBFOLDER, TEXT_ENCODER_SUBFOLDER) if not os.path.isdir(os.path.join(name, s))]
        if missing:
            raise _model_not_found(name, f"the folder has no {' or '.join(s + '/' for s in missing)}")
    elif _looks_like_local_path(name):
        raise _model_not_found(name, "no such folder")


# the model-files fingerprint is the plugin's one (the lucid prompt processor tags its entries with it too)
_local_model_folder = local_model_folder


def _read_config(folder: str, sub: str) -> Dict[str, Any]:
    try:
        with open(os.path.join(folder, sub, "config.json"), "r", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def check_text_encoder_width(pretrained_model_name_or_path: str) -> None:
    """The folder's text encoder must give the width its UNet cross-attends to (read from the two
    config.json files, nothing loaded); a folder without a unet/ (a toy world) has nothing to compare."""
    name = pretrained_model_name_or_path
    folder = _local_model_folder(name)
    if folder is None:
        return
    width = _read_config(folder, TEXT_ENCODER_SUBFOLDER).get("hidden_size")
    cross = _read_config(folder, "unet").get("cross_attention_dim")
    if isinstance(width, int) and isinstance(cross, int) and width != cross:
        shown = name.rstrip("/\\")
        raise ConfigError(
            f"{CONFIG_PREFIX}.pretrained_model_name_or_path='{name}' does not fit together: {shown}/text_encoder "
            f"gives {width}-d text embeddings (hidden_size={width}) but {shown}/unet cross-attends to {cross}-d "
            f"ones (cross_attention_dim={cross}): point {CONFIG_PREFIX}.pretrained_model_name_or_path at a "
            "complete Stable Diffusion folder whose text_encoder/ and unet/ come from the same model "
            "(or rebuild it, e.g. `lucid-build-tiny-sd PATH`)."
        )


def load_tokenizer(pretrained_model_name_or_path: str):
    """The tokenizer of a Stable Diffusion checkpoint (enough to count a prompt's tokens)."""
    from transformers import AutoTokenizer

    name = pretrained_model_name_or_path
    _check_model_folder(name)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return AutoTokenizer.from_pretrained(name, subfolder=TOKENIZER_SUBFOLDER)
    except (OSError, ValueError) as e:  # hub id not cached / no network, unreadable folder
        raise _model_not_found(name, _one_line(e)) from e


def load_tokenizer_and_text_encoder(pretrained_model_name_or_path: str, device=None):
    """``(tokenizer, text_encoder)`` of a Stable Diffusion checkpoint; the encoder is frozen, in eval
    mode, on ``device`` (default: :func:`text_encoder_device`)."""
    from transformers import CLIPTextModel

    name = pretrained_model_name_or_path
    tokenizer = load_tokenizer(name)
    try:
        text_encoder = CLIPTextModel.from_pretrained(name, subfolder=TEXT_ENCODER_SUBFOLDER)
    except (OSError, ValueError) as e:  # hub id not cached / no network, unreadable folder
        raise _model_not_found(name, _one_line(e)) from e
    text_encoder = text_encoder.to(device or text_encoder_device()).eval()
    text_encoder.requires_grad_(False)
    return tokenizer, text_encoder


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: List[str]) -> Float[Tensor, "B 77 D"]:
    """CLIP's last hidden state for ``prompts``, padded to ``model_max_length`` and, as in
    threestudio, not truncated: check lengths first (:func:`check_prompt_lengths`)."""
    tokens = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        return_tensors="pt",
    )
    return text_encoder(tokens.input_ids.to(text_encoder.device))[0]


def _save_embedding(embedding: Tensor, path: str, fingerprint: Optional[str] = None) -> None:
    # atomic (atomic_files.py), so an interrupted run never leaves a truncated cache entry behind
    row = embedding.detach().to("cpu").clone()
    if fingerprint is not None:
        # pickled with the tensor and restored by torch.load; threestudio's reader sees a plain tensor
        setattr(row, FINGERPRINT_ATTRIBUTE, fingerprint)
    buffer = io.BytesIO()
    torch.save(row, buffer)
    write_bytes(path, buffer.getbuffer(), hint=CACHE_HINT)


@register("stable-diffusion-prompt-processor")
class StableDiffusionPromptProcessor(PromptProcessor):
    @dataclass
    class Config(PromptProcessor.Config):
        pass

    cfg: Config

    def prompts_by_config_key(self) -> Dict[str, str]:
        """Every prompt this processor encodes, keyed by the config key the user would change."""
        return processor_prompts_by_key(self, CONFIG_PREFIX)

    def prepare_text_embeddings(self) -> None:
        """Check the folder's text encoder width and every prompt's length (see the module
        docstring), then encode what is not cached."""
        check_text_encoder_width(self.cfg.pretrained_model_name_or_path)
        check_prompt_lengths(load_tokenizer(self.cfg.pretrained_model_name_or_path), self.prompts_by_config_key())
        super().prepare_text_embeddings()

    def model_fingerprint(self) -> Optional[str]:
        return text_encoder_fingerprint(self.cfg.pretrained_model_name_or_path)

    # ---- on-demand encoding (threestudio keeps these for debugging; the cache path does not use them)
    def configure_text_encoder(self) -> None:
        self.tokenizer, self.text_encoder = load_tokenizer_and_text_encoder(
            self.cfg.pretrained_model_name_or_path, device=self.device
        )

    def destroy_text_encoder(self) -> None:
        del self.tokenizer
        del self.text_encoder
        cleanup()

    def get_text_embeddings(
        self, prompt: Union[str, List[str]], negative_prompt: Union[str, List[str]]
    ) -> Tuple[Float[Tensor, "B 77 D"], Float[Tensor, "B 77 D"]]:
        """Encode ``(prompt, negative_prompt)`` now; needs :meth:`configure_text_encoder` first."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negative_prompts = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
        return (
            encode_prompts(self.tokenizer, self.text_encoder, prompts),
            encode_prompts(self.tokenizer, self.text_encoder, negative_prompts),
        )

    @staticmethod
    def spawn_func(pretrained_model_name_or_path: str, prompts: List[str], cache_dir: str) -> None:
        """Encode ``prompts`` and write each ``[77, D]`` embedding to
        ``cache_dir/<hash_prompt(model, prompt)>.pt``, tagged with the model's fingerprint."""
        tokenizer, text_encoder = load_tokenizer_and_text_encoder(pretrained_model_name_or_path)
        fingerprint = text_encoder_fingerprint(pretrained_model_name_or_path)
        embeddings = encode_prompts(tokenizer, text_encoder, prompts)
        os.makedirs(cache_dir, exist_ok=True)
        for prompt, embedding in zip(prompts, embeddings):
            path = os.path.join(cache_dir, f"{hash_prompt(pretrained_model_name_or_path, prompt)}.pt")
            _save_embedding(embedding, path, fingerprint)
        del tokenizer, text_encoder
