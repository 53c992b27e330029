"""``lucid-stable-diffusion-prompt-processor``: threestudio's ``stable-diffusion-prompt-processor``
with personalised models: learned tokens and a LoRA reach the text encoder that makes the embeddings.

Options: threestudio's prompt processor's (view-dependent prompts, thresholds, Perp-Neg, ``use_cache``,
``spawn``, ...) plus ``textual_inversion_path``, ``lora_path``, ``lora_scale`` and ``base_model`` (a
single-file ``pretrained_model_name_or_path``), read and loaded by ``personalization.py``, the code the
guidance loads its model with. Set the same values on ``system.guidance`` so that the guidance's UNet
(LoRA) and its own prompts (ISM's inversion prompt) are personalised too.

The embedding cache is threestudio's (``.threestudio_cache/text_embeddings/<md5(f"{model}-{prompt}")>.pt``,
one ``[77, D]`` tensor per prompt) with two changes:

- the model part of the key carries a fingerprint of what is loaded on top of the model
  (``Personalization.fingerprint``: the contents of every token and LoRA file, and ``lora_scale``), so
  ``"a photo of <Taylor_Swift>"`` with the token loaded, with another file, at another scale, or without
  it are four entries; with nothing loaded the key is threestudio's own;
- each entry is tagged (a tensor attribute, invisible to threestudio's reader) with a fingerprint of the
  model's text-encoder files and of the personalisation; an entry whose tag differs (a rebuilt model at
  the same path) or is missing (written by threestudio) is recomputed, as is one that does not load as a
  finite ``[tokens, width]`` tensor.

Encoding runs, as threestudio's does, in a ``torch.multiprocessing`` spawn child when ``spawn`` is true
(the text encoder's memory goes back when the child exits), in this process otherwise; the child gets a
picklable job, and the folder above the plugin is put on ``sys.path`` while it starts so that a plugin
loaded by path (threestudio's ``custom/`` loader names it ``threestudio-lucid``) imports there too. A
ConfigError in the child (a token of the wrong width, a prompt over 77 tokens) comes back as the same
one line, and so does a StorageError (the cache's disk is full). Entries are written atomically.
"""
import contextlib
import hashlib
import io
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from ..compat import PromptProcessor, cleanup, debug, info, register, warn
from ..atomic_files import CACHE_HINT, write_bytes
from ..errors import ConfigError, StorageError
from ..prompt_length import processor_prompts_by_key
from ..personalization import (
    Personalization,
    PersonalizationOptions,
    check_personalized_prompt_lengths,
    encode_prompts,
    load_text_encoder,
    one_line,
    text_encoder_fingerprint,
)

PREFIX = "system.prompt_processor."
# attribute of a cached tensor naming the files it was computed from (the bundled host's processor uses
# the same attribute for its model fingerprint)
FINGERPRINT_ATTRIBUTE = "lucid_model_fingerprint"


def hash_prompt(model: str, prompt: str) -> str:
    """threestudio's cache key: ``md5(f"{model}-{prompt}")``."""
    return hashlib.md5(f"{model}-{prompt}".encode()).hexdigest()


def cache_model_id(personalization: Personalization) -> str:
    """The model part of the cache key: the model, plus the personalisation's fingerprint when
    anything is loaded on top of it."""
    fingerprint = personalization.fingerprint()
    return personalization.model if fingerprint is None else f"{personalization.model}#lucid-personalization={fingerprint}"


@dataclass
class EncodingJob:
    """What the encoding process needs (picklable: it crosses to a spawn child)."""

    personalization: Personalization
    prompts: List[str]
    named_prompts: Dict[str, str]  # config key -> prompt, for the length check's message
    paths: List[str]  # cache file of each prompt
    fingerprint: Optional[str]  # the tag each entry gets


def run_encoding_job(job: EncodingJob) -> None:
    """Load the personalised text encoder, check the prompts' lengths, encode, and write each entry
    atomically (``atomic_files.py``)."""
    pipe = load_text_encoder(job.personalization)
    check_personalized_prompt_lengths(pipe.tokenizer, job.named_prompts)
    embeddings = encode_prompts(pipe.tokenizer, pipe.text_encoder, job.prompts)
    for path, embedding in zip(job.paths, embeddings):
        row = embedding.detach().to("cpu").clone()  # a compact copy, not a view of the whole batch
        if job.fingerprint is not None:
            setattr(row, FINGERPRINT_ATTRIBUTE, job.fingerprint)
        buffer = io.BytesIO()
        torch.save(row, buffer)
        write_bytes(path, buffer.getbuffer(), hint=CACHE_HINT)
    del pipe


def _encode_in_child(job: EncodingJob, results) -> None:
    try:
        run_encoding_job(job)
        results.put(None)
    except ConfigError as e:
        results.put(str(e))
    except StorageError as e:  # a full disk: the same one line, as a StorageError
        results.put((StorageError.__name__, str(e)))
    except BaseException as e:  # noqa: BLE001  (reported in the parent, in one line)
        results.put(f"the prompt embedding process failed: {type(e).__name__}: {one_line(e)}")


@contextlib.contextmanager
def _plugin_importable_by_children():
    """While a spawn child starts (it copies ``sys.path``): the folder above the plugin on ``sys.path``
    when the plugin's package is named after its folder (``threestudio-lucid``, loaded by path), so the
    child can import the job's function by module name. An installed ``threestudio_lucid`` needs nothing."""
    package = __name__.split(".")[0]
    plugin_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parent = os.path.dirname(plugin_dir)
    add = os.path.basename(plugin_dir) == package and parent not in sys.path
    if add:
        sys.path.insert(0, parent)
    try:
        yield
    finally:
        if add and parent in sys.path:
            sys.path.remove(parent)


def run_in_spawned_process(job: EncodingJob) -> None:
    """threestudio's way: the job in a ``torch.multiprocessing`` spawn child; its error comes back here."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    process = ctx.Process(target=_encode_in_child, args=(job, results))
    with _plugin_importable_by_children():
        process.start()
    process.join()
    message = None if results.empty() else results.get()
    if isinstance(message, tuple):
        raise StorageError(message[1])
    if message is not None:
        raise ConfigError(message)
    if process.exitcode != 0:
        raise ConfigError(
            f"the prompt embedding process exited with code {process.exitcode} before reporting (out of memory?): "
            f"run again with {PREFIX}spawn=false to see the error in this process."
        )


def _read_entry(path: str) -> Optional[torch.Tensor]:
    """A cache entry if it loads as a finite ``[tokens, width]`` float tensor, else None."""
    try:
        embedding = torch.load(path, map_location="cpu")
    except Exception:  # truncated zip, garbage bytes, an unpickling error
        return None
    if not isinstance(embedding, torch.Tensor) or embedding.ndim != 2 or not embedding.is_floating_point():
        return None
    return embedding if bool(torch.isfinite(embedding).all()) else None


@register("lucid-stable-diffusion-prompt-processor")
class LucidStableDiffusionPromptProcessor(PromptProcessor):
    @dataclass
    class Config(PromptProcessor.Config, PersonalizationOptions):
        pass

    cfg: Config

    def configure(self) -> None:
        # the files exist and the options have their types before anything is encoded
        self.personalization = Personalization.from_config(self.cfg, PREFIX)
        if self.cfg.base_model and not self.personalization.single_file:
            warn(f"{PREFIX}base_model='{self.cfg.base_model}' is only used with a single-file "
                 f"{PREFIX}pretrained_model_name_or_path: ignored.")
        self._cache_model = cache_model_id(self.personalization)
        super().configure()  # view prompts, then prepare_text_embeddings() and load_text_embeddings()

    # ---- the cache ----
    def cache_path(self, prompt: str) -> str:
        return os.path.join(self._cache_dir, f"{hash_prompt(self._cache_model, prompt)}.pt")

    def entry_fingerprint(self) -> str:
        """The tag of this processor's entries: its text encoder's files and what is loaded on them."""
        p = self.personalization
        return f"{text_encoder_fingerprint(p.model, p.base_model)}+{p.fingerprint()}"

    def cache_entry_is_usable(self, prompt: str, fingerprint: str) -> bool:
        path = self.cache_path(prompt)
        if not os.path.exists(path):
            return False
        embedding = _read_entry(path)
        if embedding is None:
            warn(f"Text embedding cache file {path} (prompt [{prompt}]) is truncated or unreadable: recomputing it.")
            return False
        if getattr(embedding, FINGERPRINT_ATTRIBUTE, None) != fingerprint:
            info(f"Text embedding cache file {path} (prompt [{prompt}]) was made from other files: recomputing it.")
            return False
        return True

    def prompts_by_config_key(self) -> Dict[str, str]:
        """Every prompt this processor encodes, keyed by the config key the user would change."""
        return processor_prompts_by_key(self, PREFIX.rstrip("."))

    @rank_zero_only
    def prepare_text_embeddings(self) -> None:
        """Encode every prompt without a usable cache entry (all of them with ``use_cache=false``)."""
        os.makedirs(self._cache_dir, exist_ok=True)
        all_prompts = [self.prompt, self.negative_prompt] + self.prompts_vd + self.negative_prompts_vd
        unique_prompts = list(dict.fromkeys(all_prompts))
        fingerprint = self.entry_fingerprint()
        to_compute = [p for p in unique_prompts if not (self.cfg.use_cache and self.cache_entry_is_usable(p, fingerprint))]
        if to_compute:
            named = {k: v for k, v in self.prompts_by_config_key().items() if v in to_compute}
            job = EncodingJob(self.personalization, to_compute, named, [self.cache_path(p) for p in to_compute], fingerprint)
            if self.cfg.spawn:
                run_in_spawned_process(job)
            else:
                run_encoding_job(job)
            cleanup()
        self.prompts_computed = to_compute
        info(
            f"Text embeddings for {len(unique_prompts)} prompts: {len(to_compute)} computed with "
            f"{self._cache_model}, {len(unique_prompts) - len(to_compute)} from the cache {self._cache_dir}"
        )

    def load_from_cache(self, prompt: str) -> torch.Tensor:
        path = self.cache_path(prompt)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"Text embedding file {path} for model {self._cache_model} and prompt [{prompt}] not found."
            )
        embedding = _read_entry(path)
        if embedding is None:
            raise ConfigError(f"Text embedding file {path} (prompt [{prompt}]) is unreadable: delete it and run again.")
        debug(f"Loaded the text embedding of [{prompt}] from {path}")
        return embedding.to(self.device)

    # ---- on-demand encoding (threestudio keeps these for debugging; the cache path does not use them)
    def configure_text_encoder(self) -> None:
        self.text_pipeline = load_text_encoder(self.personalization, device=self.device)

    def destroy_text_encoder(self) -> None:
        del self.text_pipeline
        cleanup()

    def get_text_embeddings(
        self, prompt: Union[str, List[str]], negative_prompt: Union[str, List[str]]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Encode ``(prompt, negative_prompt)`` now; needs :meth:`configure_text_encoder` first."""
        pipe = self.text_pipeline
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
        return encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts), encode_prompts(pipe.tokenizer, pipe.text_encoder, negatives)
