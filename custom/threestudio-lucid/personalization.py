"""Personalised Stable Diffusion: textual inversion, LoRA and single-file checkpoints, loaded by one
code path for the guidance and the prompt processor alike (LucidDreamer's ``textual_inversion_path``,
``LoRA_path`` and ``is_safe_tensor`` + ``base_model_key``).

Options (:class:`PersonalizationOptions`, on every lucid guidance and on
``lucid-stable-diffusion-prompt-processor``):

- ``textual_inversion_path``: null, a file (or a diffusers textual-inversion folder), or a list of them.
  Formats: diffusers' ``{token: tensor [D] or [n, D]}`` (``.safetensors``, ``.bin``, ``.pt``; LucidDreamer's
  ``step_inv_1000.safetensors`` is one: key ``<Taylor_Swift>``, metadata ``{"<Taylor_Swift>": "<embed>"}``),
  A1111's ``.pt`` (``string_to_param["*"]``, token = its ``name``) and ``.safetensors`` (``emb_params``,
  token = the file name), and lora_diffusion's ``<embed>``-marked tensors. The tokens go in through
  diffusers' ``load_textual_inversion``; an n-vector token becomes ``tok tok_1 ... tok_{n-1}`` in every
  prompt (:func:`expand_multi_vector_tokens`).
- ``lora_path`` + ``lora_scale``: a LoRA for the UNet and the text encoder, fused into their weights as
  ``W + lora_scale * (alpha / r) * up @ down`` (LucidDreamer: lora_diffusion's ``patch_pipe`` then
  ``tune_lora_scale``, which computes the same sum on the fly). Formats: diffusers/peft
  (``save_lora_weights``: ``unet.<module>.lora_A.weight`` ..., alphas from its ``lora_adapter_metadata``;
  diffusers' older ``lora.down`` / processor layouts through diffusers' own converters), kohya/A1111
  (``lora_unet_<module_with_underscores>.lora_down.weight`` + ``.alpha``), and cloneofsimo's lora_diffusion
  (``.safetensors`` with ``unet:<i>:up`` / ``text_encoder:<i>:down`` tensors, the target classes and
  ranks in its metadata, and ``<embed>`` tokens; or the ``.pt`` list with its ``.text_encoder.pt`` and
  ``.ti.pt`` siblings). A file with only ``<embed>`` tokens (LucidDreamer's ts_lora ``LoRA_path``) loads
  its tokens.
- ``pretrained_model_name_or_path`` may be one ``.safetensors`` / ``.ckpt`` of a whole fine-tuned SD in the
  original layout, read by diffusers' ``from_single_file`` with ``base_model`` (a diffusers folder or hub
  id) giving the scheduler, the tokenizer and the component configs. Without ``base_model`` diffusers
  guesses the family from the weights and needs that family's configs in the local Hugging Face cache.

Why the LoRA is fused here and not loaded with ``pipe.load_lora_weights``: diffusers loads the
text-encoder half through transformers' ``load_adapter``, which transformers 5 refuses with peft < 0.22
(the newest peft is 0.21), and under threestudio's pinned transformers 4.28 diffusers has no PEFT backend
at all (``load_lora_weights`` raises). Fusing needs neither and gives what an adapter at that scale gives
(the tests compare the UNet with diffusers' own loader's); it also leaves no adapter behind, so VSD/ESD's
own peft LoRA is trained on top of the personalised weights and disabling it gives the personalised
UNet, not the base one.

Errors are one line naming the key and the fix: a missing file, an unknown format, a token whose width
is not the text encoder's (a 768-wide SD 1.x token on SD 2.x's 1024-wide encoder), a token already in the
vocabulary, a LoRA whose layers are not the model's, a single file whose configs cannot be found.

A leaf module: it imports only ``errors`` and ``prompt_length`` at import time (the bundled host's
prompt processor uses :func:`text_encoder_fingerprint`); torch's heavy friends are imported where used.
"""
import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch

from .errors import ConfigError
from .prompt_length import check_prompt_lengths

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
TEXTUAL_INVERSION_FILES = ("learned_embeds.safetensors", "learned_embeds.bin")  # diffusers' names in a folder
LORA_FILES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")  # save_lora_weights' names
EMBED_FLAG = "<embed>"  # lora_diffusion's metadata value for a token embedding
LORA_DIFFUSION_KEY = re.compile(r"^(?P<model>[^:]+):(?P<index>\d+):(?P<part>up|down)$")
# the two models a LoRA file may patch (diffusers' prefixes, lora_diffusion's attribute names)
UNET, TEXT_ENCODER = "unet", "text_encoder"
KOHYA_PREFIXES = {"lora_unet_": UNET, "lora_te_": TEXT_ENCODER}
FINGERPRINT_CHUNK = 1 << 20  # bytes read at the start, middle and end of a large file


def one_line(error: BaseException, limit: int = 240) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def dtype_argument(dtype: torch.dtype) -> dict:
    """``from_pretrained``'s weight dtype under the name this diffusers takes: ``dtype`` where it exists
    (recent releases deprecate ``torch_dtype`` with a warning on every load), else ``torch_dtype``."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401  (present since `dtype` is)
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")


# ---------------------------------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------------------------------
@dataclass
class PersonalizationOptions:
    """The config fields, shared by the guidance base and the lucid prompt processor."""

    textual_inversion_path: Optional[Any] = None  # null, a path, or a list of paths
    lora_path: Optional[str] = None
    lora_scale: float = 1.0
    # with a single-file pretrained_model_name_or_path: the diffusers folder or hub id of its base model
    base_model: Optional[str] = None


def is_single_file(name_or_path: str) -> bool:
    """A checkpoint file (rather than a diffusers folder or a hub id)."""
    return os.path.isfile(os.path.expanduser(str(name_or_path)))


@dataclass(frozen=True)
class Personalization:
    """What a component's config asks to load on top of its Stable Diffusion model, with its files
    checked. ``prefix`` is the component's config path (``system.guidance.``), for messages. Picklable
    (the prompt processor sends it to its encoding child)."""

    model: str
    base_model: Optional[str]
    textual_inversion_paths: Tuple[str, ...]
    lora_path: Optional[str]
    lora_scale: float
    prefix: str

    @classmethod
    def from_config(cls, cfg, prefix: str) -> "Personalization":
        """Read the options from ``cfg`` (a component Config) and check them: types, the files exist."""
        from omegaconf import OmegaConf

        ti = cfg.textual_inversion_path
        ti = OmegaConf.to_container(ti) if OmegaConf.is_config(ti) else ti
        if ti is None:
            ti_paths: Tuple[str, ...] = ()
        elif isinstance(ti, str):
            ti_paths = (ti,)
        elif isinstance(ti, (list, tuple)) and all(isinstance(p, str) for p in ti):
            ti_paths = tuple(ti)
        else:
            raise ConfigError(
                f"{prefix}textual_inversion_path={ti!r} must be null, a path, or a list of paths "
                f"(e.g. {prefix}textual_inversion_path=[a.safetensors,b.pt])."
            )
        scale = cfg.lora_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not torch.isfinite(torch.tensor(float(scale))):
            raise ConfigError(f"{prefix}lora_scale={scale!r} must be a finite number (1.0 = the LoRA as trained, 0 = off).")
        lora_path = cfg.lora_path or None
        base_model = cfg.base_model or None
        p = cls(
            model=str(cfg.pretrained_model_name_or_path), base_model=base_model, textual_inversion_paths=ti_paths,
            lora_path=lora_path, lora_scale=float(scale), prefix=prefix,
        )
        for path in ti_paths:
            _check_exists(path, f"{prefix}textual_inversion_path", "a textual inversion file")
        if lora_path is not None:
            _check_exists(lora_path, f"{prefix}lora_path", "a LoRA file")
        if base_model is not None and base_model.startswith((".", "/", "~")) and not os.path.isdir(os.path.expanduser(base_model)):
            raise ConfigError(
                f"{prefix}base_model='{base_model}' is not a folder: point it at the diffusers folder (or hub id) "
                "of the model the single-file checkpoint was fine-tuned from."
            )
        return p

    @property
    def model_key(self) -> str:
        return self.prefix + "pretrained_model_name_or_path"

    @property
    def single_file(self) -> bool:
        return is_single_file(self.model)

    @property
    def loads_anything(self) -> bool:
        """Whether anything is loaded on top of the model (textual inversion or a LoRA)."""
        return bool(self.textual_inversion_paths) or self.lora_path is not None

    def fingerprint(self) -> Optional[str]:
        """A short hash of what is loaded on top of the model: each textual inversion file's and the LoRA
        file's contents (in order) and ``lora_scale``; None when nothing is."""
        if not self.loads_anything:
            return None
        digest = hashlib.sha256()
        for path in self.textual_inversion_paths:
            digest.update(b"textual_inversion\n")
            _digest_path(digest, path)
        if self.lora_path is not None:
            digest.update(f"lora scale={self.lora_scale!r}\n".encode())
            for path in _lora_file_set(self.lora_path):
                _digest_path(digest, path)
        return digest.hexdigest()[:16]


def _check_exists(path: str, key: str, what: str) -> None:
    if not os.path.exists(os.path.expanduser(path)):
        raise ConfigError(f"{key}='{path}' does not exist: point it at {what} on this machine (or set it to null).")


# ---------------------------------------------------------------------------------------------------
# fingerprints
# ---------------------------------------------------------------------------------------------------
def _digest_file(digest, path: str, label: str) -> None:
    size = os.path.getsize(path)
    digest.update(f"{label}:{size}\n".encode())
    with open(path, "rb") as f:
        if size <= 3 * FINGERPRINT_CHUNK:
            digest.update(f.read())
        else:
            for offset in (0, size // 2, size - FINGERPRINT_CHUNK):
                f.seek(offset)
                digest.update(f.read(FINGERPRINT_CHUNK))


def _digest_path(digest, path: str) -> None:
    """Contents of a file, or of every file in a folder (names relative to it)."""
    path = os.path.expanduser(path)
    if os.path.isfile(path):
        _digest_file(digest, path, os.path.basename(path))
        return
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            if not name.startswith("."):
                full = os.path.join(root, name)
                _digest_file(digest, full, os.path.relpath(full, path))


def local_model_folder(name: str, probe: str = "text_encoder/config.json") -> Optional[str]:
    """The folder holding a model's files: ``name`` itself, or a hub id's snapshot in the local Hugging
    Face cache; None when neither is found."""
    if os.path.isdir(name):
        return name
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(name, probe)
    except Exception:  # not a valid hub id, no huggingface_hub
        return None
    if not isinstance(hit, str):
        return None
    return os.path.dirname(os.path.dirname(hit)) if "/" in probe else os.path.dirname(hit)


def text_encoder_fingerprint(pretrained_model_name_or_path: str, base_model: Optional[str] = None) -> Optional[str]:
    """A short hash of the files that decide the text embeddings: a diffusers model's ``tokenizer/`` and
    ``text_encoder/`` (each file's name, size and content; the start, middle and end of files over
    3 MiB), or a single-file checkpoint and its ``base_model``'s ``tokenizer/``. Equal for an identical
    rebuild, different for another seed or model at the same path. None when the model's files are not
    on this machine."""
    digest = hashlib.sha256()
    if is_single_file(pretrained_model_name_or_path):
        _digest_file(digest, os.path.expanduser(pretrained_model_name_or_path), "single-file")
        folder = local_model_folder(base_model) if base_model else None
        subfolders = ("tokenizer",)
    else:
        folder = local_model_folder(pretrained_model_name_or_path)
        if folder is None:
            return None
        subfolders = ("tokenizer", "text_encoder")
    for sub in subfolders if folder is not None else ():
        directory = os.path.join(folder, sub)
        for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
            path = os.path.join(directory, name)
            if not name.startswith(".") and os.path.isfile(path):
                _digest_file(digest, path, f"{sub}/{name}")
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------
# reading files
# ---------------------------------------------------------------------------------------------------
def _read_tensors(path: str, key: str) -> Tuple[Any, Dict[str, str]]:
    """``(contents, safetensors metadata)`` of a ``.safetensors`` file or a torch pickle (read with
    ``weights_only``: tensors, dicts, lists, strings and numbers only)."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except Exception as e:  # a header that does not parse, a truncated file
            raise ConfigError(f"{key}='{path}' is not a readable safetensors file ({one_line(e, 160)}): check the file.") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True), {}
    except Exception as e:
        raise ConfigError(
            f"{key}='{path}' is not a readable safetensors or torch file ({one_line(e, 160)}): check the file."
        ) from None


def _in_folder(path: str, names: Tuple[str, ...], key: str, what: str) -> str:
    path = os.path.expanduser(path)
    if not os.path.isdir(path):
        return path
    for name in names:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    raise ConfigError(f"{key}='{path}' is a folder without {' or '.join(names)}: point it at {what} file.")


def _as_rows(tensor: Any) -> Optional[torch.Tensor]:
    """A token embedding as ``[n, D]`` float rows (``[D]`` is one row); None if it is not one."""
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tensor.ndim not in (1, 2):
        return None
    return tensor.detach().reshape(-1, tensor.shape[-1]).float()


def _unknown_textual_inversion(path: str, key: str, contents: Any) -> ConfigError:
    shown = sorted(contents)[:4] if isinstance(contents, dict) else type(contents).__name__
    return ConfigError(
        f"{key}='{path}' is not a textual inversion file this plugin reads (it holds {shown}): use diffusers' "
        "{token: tensor} (.safetensors/.bin), A1111's .pt (string_to_param) or .safetensors (emb_params), or "
        "lora_diffusion's <embed> tokens."
    )


def read_textual_inversion(path: str, key: str) -> Dict[str, torch.Tensor]:
    """``{token: [n, D] float rows}`` of one textual inversion file (see the module docstring for the
    formats); a format it does not know is a ConfigError naming ``key``."""
    path = _in_folder(path, TEXTUAL_INVERSION_FILES, key, "a textual inversion")
    contents, metadata = _read_tensors(path, key)
    if not isinstance(contents, dict):
        raise _unknown_textual_inversion(path, key, contents)
    marked = {k: v for k, v in contents.items() if metadata.get(k) == EMBED_FLAG}
    if marked:  # lora_diffusion: only the <embed>-marked tensors are tokens
        found = marked
    elif "string_to_param" in contents:  # A1111 .pt
        params = contents["string_to_param"]
        name = contents.get("name") or os.path.splitext(os.path.basename(path))[0]
        found = {str(name): params.get("*") if isinstance(params, dict) else None}
    elif set(contents) == {"emb_params"}:  # A1111 .safetensors: the token is the file's name
        found = {os.path.splitext(os.path.basename(path))[0]: contents["emb_params"]}
    elif len(contents) == 1:  # diffusers
        found = dict(contents)
    else:
        raise _unknown_textual_inversion(path, key, contents)
    return _token_rows(found, path, key, contents)


def _token_rows(found: Dict[Any, Any], path: str, key: str, contents: Any) -> Dict[str, torch.Tensor]:
    """``{token: [n, width] rows}`` of ``found``; anything that is not an embedding is an unknown format."""
    out = {}
    for token, tensor in found.items():
        rows = _as_rows(tensor)
        if rows is None:
            raise _unknown_textual_inversion(path, key, contents)
        out[str(token)] = rows
    return out


@dataclass
class LoraPair:
    """One layer's LoRA: ``delta W = (alpha / r) up @ down`` (``alpha / sqrt(r)`` with rsLoRA);
    ``down`` [r, in, ...], ``up`` [out, r, ...]; alpha None means alpha = r (a scale of 1)."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: Optional[float] = None
    rslora: bool = False

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scaling(self) -> float:
        if self.alpha is None:
            return 1.0
        return self.alpha / (self.rank**0.5 if self.rslora else self.rank)


@dataclass
class LoraLayers:
    """The LoRA of one model (``unet`` or ``text_encoder``), named the way its format names layers:
    ``modules`` (diffusers' module paths), ``kohya`` (module paths with ``_`` for ``.``), or
    ``lora_diffusion`` (an ordered list, matched to the Linear / Conv2d layers under ``target_classes``
    in module order, as lora_diffusion's ``monkeypatch_or_replace_lora_extended`` does)."""

    naming: str
    named: Dict[str, LoraPair]
    ordered: List[LoraPair]
    target_classes: Tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.named) + len(self.ordered)


@dataclass
class LoraFile:
    format: str  # "diffusers", "kohya", "lora_diffusion"
    layers: Dict[str, LoraLayers]  # "unet" / "text_encoder" -> its layers
    embeddings: Dict[str, torch.Tensor]  # token -> [n, D] rows (lora_diffusion files carry tokens)
    path: str


def _lora_file_set(path: str) -> List[str]:
    """The files one ``lora_path`` reads: the file (or the folder's weights file), plus lora_diffusion's
    ``.text_encoder.pt`` / ``.ti.pt`` siblings of a ``.pt`` file (as its ``patch_pipe`` finds them)."""
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        return [path]
    files = [path]
    if path.endswith(".pt"):
        stem = _lora_diffusion_stem(path)
        files = [stem + ".pt"] + [stem + s for s in (".text_encoder.pt", ".ti.pt") if os.path.isfile(stem + s)]
    return [f for f in files if os.path.isfile(f)]


def _lora_diffusion_stem(path: str) -> str:
    for suffix in (".text_encoder.pt", ".ti.pt", ".pt"):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def _unknown_lora(path: str, key: str, keys) -> ConfigError:
    return ConfigError(
        f"{key}='{path}' is not a LoRA file this plugin reads (its keys look like {sorted(keys)[:3]}): use "
        "diffusers/peft (save_lora_weights), kohya/A1111 (lora_unet_... .lora_down.weight) or lora_diffusion "
        "(unet:0:up, <embed> tokens)."
    )


def read_lora(path: str, key: str) -> LoraFile:
    """A LoRA file in any of the formats of the module docstring; an unknown one is a ConfigError."""
    path = _in_folder(path, LORA_FILES, key, "a LoRA")
    contents, metadata = _read_tensors(path, key)
    if isinstance(contents, list):  # lora_diffusion's .pt: [up, down, up, down, ...] for the UNet
        return _read_lora_diffusion_pt(path, key, contents)
    if not isinstance(contents, dict) or not contents or not all(isinstance(v, torch.Tensor) for v in contents.values()):
        raise _unknown_lora(path, key, contents if isinstance(contents, dict) else [type(contents).__name__])
    keys = list(contents)
    if any(LORA_DIFFUSION_KEY.match(k) for k in keys) or EMBED_FLAG in metadata.values():
        return _read_lora_diffusion(path, key, contents, metadata)
    if all(k.startswith(tuple(KOHYA_PREFIXES)) for k in keys):
        return _read_kohya(path, key, contents)
    if all(k.startswith((UNET + ".", TEXT_ENCODER + ".")) for k in keys):
        return _read_diffusers(path, key, contents, metadata)
    raise _unknown_lora(path, key, keys)


def _read_lora_diffusion(path, key, contents, metadata) -> LoraFile:
    groups: Dict[str, Dict[int, Dict[str, torch.Tensor]]] = {}
    embeddings = {}
    for name, tensor in contents.items():
        m = LORA_DIFFUSION_KEY.match(name)
        if m:
            groups.setdefault(m["model"], {}).setdefault(int(m["index"]), {})[m["part"]] = tensor
        elif metadata.get(name) == EMBED_FLAG:
            rows = _as_rows(tensor)
            if rows is None:
                raise _unknown_lora(path, key, [name])
            embeddings[name] = rows
        else:
            raise _unknown_lora(path, key, [name])
    layers = {}
    for model, pairs in groups.items():
        if model not in (UNET, TEXT_ENCODER):
            raise ConfigError(f"{key}='{path}' holds a lora_diffusion LoRA for '{model}': only unet and text_encoder are patched.")
        try:
            targets = tuple(json.loads(metadata[model]))
        except (KeyError, ValueError):
            raise ConfigError(
                f"{key}='{path}': its '{model}' LoRA has no target classes in the safetensors metadata "
                "(lora_diffusion writes them): re-save it with lora_diffusion's save_safeloras."
            ) from None
        if sorted(pairs) != list(range(len(pairs))) or any(set(p) != {"up", "down"} for p in pairs.values()):
            raise ConfigError(f"{key}='{path}': its '{model}' LoRA misses up or down tensors: the file is incomplete.")
        ordered = [LoraPair(down=pairs[i]["down"], up=pairs[i]["up"]) for i in range(len(pairs))]
        layers[model] = LoraLayers("lora_diffusion", {}, ordered, targets)
    return LoraFile("lora_diffusion", layers, embeddings, path)


# lora_diffusion's default targets (its UNET_DEFAULT_TARGET_REPLACE / TEXT_ENCODER_DEFAULT_TARGET_REPLACE)
LORA_DIFFUSION_TARGETS = {UNET: ("CrossAttention", "Attention", "GEGLU"), TEXT_ENCODER: ("CLIPAttention",)}


def _read_lora_diffusion_pt(path, key, contents) -> LoraFile:
    """lora_diffusion's torch format: ``X.pt`` (UNet), ``X.text_encoder.pt``, ``X.ti.pt`` ({token: tensor})."""
    stem = _lora_diffusion_stem(path)
    layers, embeddings = {}, {}
    for model, file in ((UNET, stem + ".pt"), (TEXT_ENCODER, stem + ".text_encoder.pt")):
        if not os.path.isfile(file):
            continue
        tensors = contents if file == path else _read_tensors(file, key)[0]
        if not isinstance(tensors, list) or len(tensors) % 2 or not all(isinstance(t, torch.Tensor) for t in tensors):
            raise _unknown_lora(file, key, [type(tensors).__name__])
        ordered = [LoraPair(down=tensors[i + 1], up=tensors[i]) for i in range(0, len(tensors), 2)]
        layers[model] = LoraLayers("lora_diffusion", {}, ordered, LORA_DIFFUSION_TARGETS[model])
    if os.path.isfile(stem + ".ti.pt"):
        embeddings = read_textual_inversion_dict(stem + ".ti.pt", key)
    return LoraFile("lora_diffusion", layers, embeddings, path)


def read_textual_inversion_dict(path: str, key: str) -> Dict[str, torch.Tensor]:
    """``{token: rows}`` of a file holding any number of tokens (lora_diffusion's ``.ti.pt``)."""
    contents, _ = _read_tensors(path, key)
    if not isinstance(contents, dict):
        raise _unknown_textual_inversion(path, key, contents)
    return _token_rows(contents, path, key, contents)


def _read_kohya(path, key, contents) -> LoraFile:
    pieces: Dict[str, Dict[str, Dict[str, torch.Tensor]]] = {}
    for name, tensor in contents.items():
        prefix = next(p for p in KOHYA_PREFIXES if name.startswith(p))
        module, _, part = name[len(prefix):].partition(".")
        if part not in ("lora_down.weight", "lora_up.weight", "alpha"):
            if part == "dora_scale" or part.startswith(("hada_", "lokr_")):
                raise ConfigError(
                    f"{key}='{path}' is a LyCORIS/DoRA file ('{name}'), not a plain LoRA: convert it to a LoRA "
                    "or use one trained as a LoRA."
                )
            raise _unknown_lora(path, key, [name])
        pieces.setdefault(KOHYA_PREFIXES[prefix], {}).setdefault(module, {})[part] = tensor
    layers = {}
    for model, modules in pieces.items():
        named = {}
        for module, parts in modules.items():
            if "lora_down.weight" not in parts or "lora_up.weight" not in parts:
                raise ConfigError(f"{key}='{path}': layer '{module}' misses lora_down or lora_up: the file is incomplete.")
            alpha = parts.get("alpha")
            named[module] = LoraPair(parts["lora_down.weight"], parts["lora_up.weight"],
                                     None if alpha is None else float(alpha))
        layers[model] = LoraLayers("kohya", named, [])
    return LoraFile("kohya", layers, {}, path)


def _pattern_value(patterns: Dict[str, Any], module: str, default):
    """peft's ``rank_pattern`` / ``alpha_pattern`` lookup: a pattern matches a module path that ends
    with it (as a regular expression, after a dot or at the start)."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def _read_diffusers(path, key, contents, metadata) -> LoraFile:
    adapter = {}
    if metadata.get("lora_adapter_metadata"):
        try:
            adapter = json.loads(metadata["lora_adapter_metadata"])
        except ValueError:
            adapter = {}
    layers = {}
    for model in (UNET, TEXT_ENCODER):
        sub = {k[len(model) + 1:]: v for k, v in contents.items() if k.startswith(model + ".")}
        if not sub:
            continue
        if adapter.get(f"{model}.use_dora"):
            raise ConfigError(f"{key}='{path}' is a DoRA adapter, not a plain LoRA: merge it into the model instead.")
        alphas = {k[: -len(".alpha")]: float(v) for k, v in sub.items() if k.endswith(".alpha")}
        sub = {k: v for k, v in sub.items() if not k.endswith(".alpha")}
        if not all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in sub):
            sub = _diffusers_legacy_to_peft(sub, model, path, key)
        named = {}
        for name in {k.rsplit(".lora_", 1)[0] for k in sub}:
            down, up = sub.get(f"{name}.lora_A.weight"), sub.get(f"{name}.lora_B.weight")
            if down is None or up is None:
                raise ConfigError(f"{key}='{path}': layer '{model}.{name}' misses lora_A or lora_B: the file is incomplete.")
            default_alpha = adapter.get(f"{model}.lora_alpha")
            alpha = alphas.get(name, _pattern_value(adapter.get(f"{model}.alpha_pattern"), name, default_alpha))
            named[name] = LoraPair(down, up, None if alpha is None else float(alpha), bool(adapter.get(f"{model}.use_rslora")))
        layers[model] = LoraLayers("modules", named, [])
    return LoraFile("diffusers", layers, {}, path)


def _diffusers_legacy_to_peft(state_dict, model, path, key):
    """diffusers' older LoRA layouts (``lora.down.weight``, attention-processor ``to_q_lora``,
    ``lora_linear_layer``) in peft's names, by diffusers' own converters."""
    try:
        from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft, convert_unet_state_dict_to_peft

        if model == UNET:
            return convert_unet_state_dict_to_peft(state_dict)
        return convert_state_dict_to_peft(convert_state_dict_to_diffusers(state_dict))
    except Exception:
        raise _unknown_lora(path, key, [f"{model}.{k}" for k in state_dict]) from None


# ---------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------
_TEXT_ENCODER_PIPELINE = None


def text_encoder_pipeline(tokenizer, text_encoder):
    """A diffusers pipeline holding only ``tokenizer`` and ``text_encoder``, with diffusers'
    ``TextualInversionLoaderMixin`` (what the prompt processor needs: no UNet or VAE is loaded)."""
    global _TEXT_ENCODER_PIPELINE
    if _TEXT_ENCODER_PIPELINE is None:
        from diffusers import DiffusionPipeline
        from diffusers.loaders import TextualInversionLoaderMixin

        class TextEncoderPipeline(DiffusionPipeline, TextualInversionLoaderMixin):
            def __init__(self, tokenizer, text_encoder):
                super().__init__()
                self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder)

        _TEXT_ENCODER_PIPELINE = TextEncoderPipeline
    return _TEXT_ENCODER_PIPELINE(tokenizer=tokenizer, text_encoder=text_encoder)


def load_single_file_pipeline(p: Personalization, dtype: torch.dtype, text_only: bool = False):
    """``StableDiffusionPipeline.from_single_file`` of ``p.model`` with ``config=p.base_model`` (no
    safety checker; ``text_only``: no UNet or VAE either, where diffusers allows it)."""
    from diffusers import StableDiffusionPipeline

    kwargs = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False, **dtype_argument(dtype))
    if p.base_model is not None:
        if hub_offline() and local_model_folder(p.base_model, "model_index.json") is None:
            raise ConfigError(
                f"{p.prefix}base_model='{p.base_model}' is not a local folder nor in the Hugging Face cache (and the "
                "hub is offline): point it at the diffusers folder of the model the checkpoint was fine-tuned from."
            )
        kwargs["config"] = p.base_model
    if hub_offline():
        kwargs["local_files_only"] = True
    path = os.path.expanduser(p.model)
    try:
        try:
            return StableDiffusionPipeline.from_single_file(path, **kwargs, **(dict(unet=None, vae=None) if text_only else {}))
        except (TypeError, AttributeError):
            if not text_only:
                raise
            return StableDiffusionPipeline.from_single_file(path, **kwargs)  # a diffusers that needs every part
    except Exception as e:
        base_key = p.prefix + "base_model"
        if p.base_model is None:
            raise ConfigError(
                f"{p.model_key}='{p.model}' is a single-file checkpoint and diffusers could not find the configs of "
                f"its model family ({one_line(e, 160)}): set {base_key} to the diffusers folder or hub id it was "
                "fine-tuned from (e.g. stabilityai/stable-diffusion-2-1-base); its scheduler and configs are used."
            ) from None
        raise ConfigError(
            f"{p.model_key}='{p.model}' does not load as a Stable Diffusion checkpoint with {base_key}='{p.base_model}' "
            f"({one_line(e, 160)}): check that the file is a whole SD checkpoint and {base_key} its model family."
        ) from None


def load_text_encoder(p: Personalization, dtype: torch.dtype = torch.float32, device=None):
    """The personalised text side of ``p.model``: a :func:`text_encoder_pipeline` (tokenizer + text
    encoder, in eval mode, frozen, on ``device``) with ``p``'s tokens and LoRA loaded."""
    if p.single_file:
        full = load_single_file_pipeline(p, dtype, text_only=True)
        pipe = text_encoder_pipeline(full.tokenizer, full.text_encoder)
    else:
        from transformers import AutoTokenizer, CLIPTextModel

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            tokenizer = AutoTokenizer.from_pretrained(p.model, subfolder="tokenizer")
            text_encoder = CLIPTextModel.from_pretrained(p.model, subfolder="text_encoder", **_transformers_dtype(dtype))
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"Cannot load the CLIP text encoder of {p.model_key}='{p.model}' ({one_line(e, 160)}): point it at a "
                "local diffusers folder with tokenizer/ and text_encoder/ (e.g. one made with `lucid-build-tiny-sd "
                "PATH`), a hub id in the local Hugging Face cache, or a single-file checkpoint with base_model."
            ) from None
        pipe = text_encoder_pipeline(tokenizer, text_encoder)
    personalize(pipe, p)
    pipe.text_encoder.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval().requires_grad_(False)
    return pipe


def _transformers_dtype(dtype: torch.dtype) -> dict:
    import inspect

    from transformers import PreTrainedModel

    takes_dtype = "dtype" in inspect.signature(PreTrainedModel.from_pretrained).parameters
    return {"dtype": dtype} if takes_dtype else {"torch_dtype": dtype}


# ---------------------------------------------------------------------------------------------------
# applying
# ---------------------------------------------------------------------------------------------------
def personalize(pipe, p: Personalization) -> None:
    """Load ``p``'s tokens into ``pipe``'s tokenizer and text encoder, and fuse its LoRA into
    ``pipe.text_encoder`` and, when the pipeline has one, ``pipe.unet`` (at ``p.lora_scale``)."""
    embeddings: List[Tuple[str, str, str, torch.Tensor]] = []  # (key, path, token, rows)
    for path in p.textual_inversion_paths:
        key = p.prefix + "textual_inversion_path"
        for token, rows in read_textual_inversion(path, key).items():
            embeddings.append((key, path, token, rows))
    lora = read_lora(p.lora_path, p.prefix + "lora_path") if p.lora_path is not None else None
    if lora is not None:
        embeddings += [(p.prefix + "lora_path", p.lora_path, t, r) for t, r in lora.embeddings.items()]
    if embeddings:
        load_tokens(pipe, p, embeddings)
    if lora is not None:
        for model in (TEXT_ENCODER, UNET):
            target = getattr(pipe, model, None)
            if model in lora.layers and target is not None:
                fuse_lora(target, lora.layers[model], p.lora_scale, p, model)


def fuse_unet_lora(unet, p: Personalization, owner_key: str) -> int:
    """Fuse the UNet half of ``p``'s LoRA (if any) into another model's UNet (VSD/ESD's separate
    estimator, the model of ``owner_key``); returns the number of layers fused."""
    if p.lora_path is None:
        return 0
    lora = read_lora(p.lora_path, p.prefix + "lora_path")
    if UNET not in lora.layers:
        return 0
    return fuse_lora(unet, lora.layers[UNET], p.lora_scale, p, UNET, owner_key)


def load_tokens(pipe, p: Personalization, embeddings) -> None:
    """Check each token (width, not yet in the vocabulary, not loaded twice), then load them all with
    diffusers' ``load_textual_inversion``."""
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    width = text_encoder.get_input_embeddings().weight.shape[-1]
    vocabulary = tokenizer.get_vocab()
    seen = {}
    for key, path, token, rows in embeddings:
        if rows.shape[-1] != width:
            family = {768: "SD 1.x", 1024: "SD 2.x"}.get(rows.shape[-1], "another model")
            raise ConfigError(
                f"{key}='{path}': token '{token}' is {rows.shape[-1]}-wide (trained for {family}) but the text encoder "
                f"of {p.model_key}='{p.model}' takes {width}-wide token embeddings: use an embedding trained for "
                "this model's family."
            )
        names = [token] + [f"{token}_{i}" for i in range(1, rows.shape[0])]
        for name in names:
            if name in seen:
                raise ConfigError(
                    f"{key}='{path}': token '{name}' is also loaded from '{seen[name]}': load each token once "
                    "(remove one of the files, or rename the token in one)."
                )
            if name in vocabulary:
                raise ConfigError(
                    f"{key}='{path}': token '{name}' is already in the tokenizer's vocabulary of {p.model_key}: "
                    "rename the token in the file (e.g. '<my-token>'), so it cannot collide with a word of the model."
                )
            seen[name] = path
    # one dict per token: diffusers' diffusers-format branch ({token: tensor}); [n, D] rows become n tokens
    pipe.load_textual_inversion([{token: rows} for _, _, token, rows in embeddings])


def _module_name_candidates(name: str) -> List[str]:
    """A module path and its spelling with / without ``text_model.`` (transformers >= 5.6 dropped
    that wrapper from CLIPTextModel's module paths; files of either era name it or not)."""
    if name.startswith("text_model."):
        return [name, name[len("text_model."):]]
    return [name, "text_model." + name]


def resolve_lora_layers(
    model, layers: LoraLayers, p: Personalization, model_name: str, owner_key: Optional[str] = None
) -> Dict[str, LoraPair]:
    """``{module path in model: LoraPair}``: the file's layer names (or order) matched to ``model``'s
    modules (``model_name`` of the model of ``owner_key``, default ``p.model_key``); a layer that does
    not exist or does not fit is a ConfigError."""
    key = f"{p.prefix}lora_path='{p.lora_path}'"
    owner = owner_key or p.model_key
    modules = dict(model.named_modules())
    if layers.naming == "lora_diffusion":
        for legacy in (False, True):
            resolved = _match_in_order(model, layers, legacy)
            if resolved is not None:
                return resolved
        n_candidates = sum(1 for _ in _lora_diffusion_candidates(model, layers.target_classes, False))
        raise ConfigError(
            f"{key}: its lora_diffusion {model_name} LoRA has {len(layers.ordered)} layers that do not match the "
            f"{n_candidates} Linear/Conv2d layers under {list(layers.target_classes)} of {owner}'s {model_name} "
            "(in number or shape): it was trained for another model; use a LoRA of this model's family."
        )
    if layers.naming == "kohya":
        flat = {}
        for name in modules:
            for candidate in _module_name_candidates(name):
                flat.setdefault(candidate.replace(".", "_"), name)
        lookup = lambda n: flat.get(n)  # noqa: E731
    else:
        lookup = lambda n: next((c for c in _module_name_candidates(n) if c in modules), None)  # noqa: E731
    resolved = {}
    for name, pair in layers.named.items():
        module_name = lookup(name)
        if module_name is None or not hasattr(modules[module_name], "weight"):
            raise ConfigError(
                f"{key}: its {model_name} LoRA patches '{name}', which {owner}'s {model_name} does not have: "
                "it was trained for another model; use a LoRA of this model's family."
            )
        _check_fits(modules[module_name].weight, pair, key, f"{owner}'s {model_name}", module_name)
        resolved[module_name] = pair
    return resolved


def _check_fits(weight: torch.Tensor, pair: LoraPair, key: str, model_name: str, module_name: str) -> None:
    fits = (
        pair.up.shape[0] == weight.shape[0]
        and pair.up.flatten(1).shape[1] == pair.down.shape[0]
        and pair.down.flatten(1).shape[1] == weight[0].numel()
    )
    if not fits:
        raise ConfigError(
            f"{key}: its LoRA for {model_name} layer '{module_name}' is {tuple(pair.up.shape)} x {tuple(pair.down.shape)}, "
            f"which does not fit the layer's {tuple(weight.shape)} weight: it was trained for another model."
        )


def _is_target(module, target_classes) -> bool:
    # by class name, as lora_diffusion matches; base classes too (transformers 4.4x's CLIPSdpaAttention)
    return any(c.__name__ in target_classes for c in type(module).__mro__)


def _lora_diffusion_candidates(model, target_classes, legacy: bool):
    """lora_diffusion's ``_find_modules``: for each module of a target class (in module order), its
    Linear / Conv2d descendants. ``legacy``: the transformer blocks of diffusers <= 0.12 (when
    lora_diffusion was written) registered ``ff`` between ``attn1`` and ``attn2``, not after them."""
    import torch.nn as nn

    ancestors = [(n, m) for n, m in model.named_modules() if _is_target(m, target_classes)]
    if legacy:
        rank = {"attn1": 0, "ff.net.0": 1, "attn2": 2}
        first: Dict[str, int] = {}

        def order(item):
            index, (name, _) = item
            m = re.match(r"(.*)\.(attn1|ff\.net\.0|attn2)$", name)
            block, r = (m[1], rank[m[2]]) if m else (name, 0)
            return first.setdefault(block, index), r

        ancestors = [a for _, a in sorted(enumerate(ancestors), key=order)]
    seen = set()
    for name, ancestor in ancestors:
        for child_name, child in ancestor.named_modules():
            full = f"{name}.{child_name}" if child_name else name
            if isinstance(child, (nn.Linear, nn.Conv2d)) and full not in seen:
                seen.add(full)
                yield full, child


def _match_in_order(model, layers: LoraLayers, legacy: bool) -> Optional[Dict[str, LoraPair]]:
    import torch.nn as nn

    pairs = layers.ordered
    resolved, i = {}, 0
    for name, module in _lora_diffusion_candidates(model, layers.target_classes, legacy):
        if i == len(pairs):
            return None  # more layers than the file has: not the model it was trained on
        pair = pairs[i]
        if isinstance(module, nn.Linear) != (pair.up.ndim == 2):
            continue  # lora_diffusion skips a layer of the other kind
        w = module.weight
        if pair.up.shape[0] != w.shape[0] or pair.down.flatten(1).shape[1] != w[0].numel():
            return None
        resolved[name] = pair
        i += 1
    return resolved if i == len(pairs) else None


@torch.no_grad()
def fuse_lora(
    model, layers: LoraLayers, scale: float, p: Personalization, model_name: str, owner_key: Optional[str] = None
) -> int:
    """``W += scale * scaling * up @ down`` for every layer of the file (computed in fp32, added in the
    weight's dtype, on its device); returns the number of layers fused."""
    resolved = resolve_lora_layers(model, layers, p, model_name, owner_key)
    modules = dict(model.named_modules())
    for name, pair in resolved.items():
        weight = modules[name].weight
        delta = pair.up.flatten(1).float() @ pair.down.flatten(1).float()
        delta = (delta * (pair.scaling * float(scale))).reshape(weight.shape)
        weight.add_(delta.to(device=weight.device, dtype=weight.dtype))
    return len(resolved)


# ---------------------------------------------------------------------------------------------------
# encoding
# ---------------------------------------------------------------------------------------------------
def expand_multi_vector_tokens(tokenizer, text: str) -> str:
    """``tok`` -> ``tok tok_1 ... tok_{n-1}`` for each n-vector token ``load_textual_inversion`` added
    (diffusers' ``maybe_convert_prompt``, but matched the way the tokenizer matches added tokens, i.e.
    case-insensitively: diffusers compares ``tokenize()``'s lowercased pieces with the tokens' spelling,
    which misses ``EasyNegative``-style names under transformers 5)."""
    added = getattr(tokenizer, "added_tokens_encoder", {}) or {}
    for token in sorted(added, key=len, reverse=True):
        if f"{token}_1" not in added:
            continue
        n = 1
        while f"{token}_{n}" in added:
            n += 1
        replacement = " ".join([token] + [f"{token}_{i}" for i in range(1, n)])
        text = re.sub(re.escape(token) + r"(?!_\d)", lambda _: replacement, text, flags=re.IGNORECASE)
    return text


def check_personalized_prompt_lengths(tokenizer, named_prompts: Dict[str, str]) -> None:
    """``check_prompt_lengths`` on the prompts as the text encoder sees them (multi-vector tokens expanded)."""
    check_prompt_lengths(tokenizer, {k: expand_multi_vector_tokens(tokenizer, v) for k, v in named_prompts.items()})


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: List[str], device=None) -> torch.Tensor:
    """CLIP's last hidden state ``[B, 77, D]`` for ``prompts`` (multi-vector tokens expanded), padded to
    ``model_max_length`` and, as in threestudio, not truncated: check lengths first."""
    texts = [expand_multi_vector_tokens(tokenizer, p) for p in prompts]
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    return text_encoder(ids.to(device if device is not None else text_encoder.device))[0]
