"""Prompt processors: a prompt becomes cached text embeddings, picked per camera view.

Same contract as ``threestudio/models/prompt_processors/base.py`` (see
``shared/reference/threestudio-api.md`` section 10):

- four view directions, in threestudio's index order ``0 side`` (the default), ``1 front``,
  ``2 back``, ``3 overhead`` (the last matching condition wins, so overhead beats the azimuth ones);
- view-dependent prompts ``"X, side view"`` ... or, with ``view_dependent_prompt_front``,
  ``"side view of X"`` ... (``"backside view of X"`` for the back); negative prompts are not
  view-dependent;
- one ``[77, D]`` tensor per prompt cached at
  ``.threestudio_cache/text_embeddings/<md5(f"{model}-{prompt}")>.pt`` relative to the working
  directory, so the cache is shared with threestudio runs from the same folder;
- ``processor()`` returns a :class:`PromptProcessorOutput` whose ``get_text_embeddings`` gives
  ``cat(cond, uncond)`` for a batch of cameras.

Deviations, each deliberate:

- Missing embeddings are computed **in this process** even when ``spawn=True`` (the field is kept
  so threestudio configs parse). threestudio runs ``spawn_func`` in a ``torch.multiprocessing``
  spawn child so the text encoder's memory is returned to the GPU when the child exits; a spawned
  child must re-import the processor class by module name, which fails for a plugin loaded by path
  (``threestudio-lucid`` is not importable in the child), and on a CPU there is no memory to win back.
  The encoder is dropped and ``cleanup()`` runs right after encoding instead.
- Prompt debiasing (``use_prompt_debiasing``, a BERT masked-LM) is not bundled: it raises a
  :class:`ConfigError`. Inside a threestudio checkout the real processor provides it.
- Prompts that are equal (e.g. the empty negative prompt of all four views) are encoded once.
- Every cached entry is checked before it is trusted: a file that does not load as a finite
  ``[77, D]`` tensor (truncated by a full disk or an interrupted copy) is recomputed with a one-line
  warning instead of crashing the run; and an entry whose model fingerprint (``model_fingerprint()``,
  stored as an attribute of the saved tensor) differs from the model's files now is recomputed too,
  since the key (threestudio's, kept so the files stay shared) holds the model's path, not its
  contents. An entry without a fingerprint (written by threestudio) is recomputed once when the
  model has one.
- A ``lib:`` prompt with no ``load/prompt_library.json`` (or no match in it) is a one-line
  :class:`ConfigError` instead of a ``KeyError``.
"""
import hashlib
import os

import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from ... import debug, info, warn
from ...utils.base import BaseObject
from ...utils.config import ConfigError
from ...utils.misc import barrier, cleanup
from ...utils.typing import *

# Both paths are relative to the working directory, as in threestudio.
PROMPT_LIBRARY_PATH = os.path.join("load", "prompt_library.json")
TEXT_EMBEDDINGS_CACHE_DIR = os.path.join(".threestudio_cache", "text_embeddings")
# attribute of a cached embedding tensor naming the model files it was computed from
FINGERPRINT_ATTRIBUTE = "lucid_model_fingerprint"


def hash_prompt(model: str, prompt: str) -> str:
    """Cache key of ``prompt`` encoded by ``model``: ``md5(f"{model}-{prompt}")`` (threestudio's)."""
    return hashlib.md5(f"{model}-{prompt}".encode()).hexdigest()


def shift_azimuth_deg(azimuth: Float[Tensor, "..."]) -> Float[Tensor, "..."]:
    """Wrap azimuths in degrees to ``[-180, 180)``."""
    return (azimuth + 180) % 360 - 180


def shifted_exponential_decay(a: float, b: float, c: float, r: Tensor) -> Tensor:
    """``a * exp(-b * r) + c``: the Perp-Neg weight curve (threestudio's ``shifted_expotional_decay``)."""
    return a * torch.exp(-b * r) + c


@dataclass
class DirectionConfig:
    """One view direction: how it rewrites the prompt and the negative prompt, and which cameras
    (elevation, azimuth in degrees; distance) it covers."""

    name: str
    prompt: Callable[[str], str]
    negative_prompt: Callable[[str], str]
    condition: Callable[
        [Float[Tensor, "B"], Float[Tensor, "B"], Float[Tensor, "B"]],
        Float[Tensor, "B"],
    ]


# name -> (template "X, <view>", template "<view> of X" used with view_dependent_prompt_front).
# Order is the direction index: 0 side, 1 front, 2 back, 3 overhead.
VIEW_PROMPT_TEMPLATES = {
    "side": ("{}, side view", "side view of {}"),
    "front": ("{}, front view", "front view of {}"),
    "back": ("{}, back view", "backside view of {}"),
    "overhead": ("{}, overhead view", "overhead view of {}"),
}


def make_view_directions(cfg) -> List[DirectionConfig]:
    """The four directions of threestudio, reading the thresholds (degrees) from ``cfg`` when called.

    side: every camera (the default); front: ``|shift(az)| < front_threshold``;
    back: ``|shift(az)| > 180 - back_threshold``; overhead: ``elevation > overhead_threshold``.
    All comparisons are strict, so a camera exactly on a threshold keeps the earlier direction.
    """

    def side(elevation, azimuth, distance):
        return torch.ones_like(elevation, dtype=torch.bool)

    def front(elevation, azimuth, distance):
        shifted = shift_azimuth_deg(azimuth)
        return (shifted > -cfg.front_threshold) & (shifted < cfg.front_threshold)

    def back(elevation, azimuth, distance):
        shifted = shift_azimuth_deg(azimuth)
        return (shifted > 180 - cfg.back_threshold) | (shifted < -180 + cfg.back_threshold)

    def overhead(elevation, azimuth, distance):
        return elevation > cfg.overhead_threshold

    conditions = {"side": side, "front": front, "back": back, "overhead": overhead}
    template_index = 1 if cfg.view_dependent_prompt_front else 0

    def rewrite(template):
        return lambda prompt: template.format(prompt)

    def unchanged(prompt):
        return prompt

    return [
        DirectionConfig(name, rewrite(templates[template_index]), unchanged, conditions[name])
        for name, templates in VIEW_PROMPT_TEMPLATES.items()
    ]


@dataclass
class PromptProcessorOutput:
    """What guidance receives: the embeddings of the prompt, the negative prompt, their four
    view-dependent versions, and the settings needed to pick among them per camera."""

    text_embeddings: Float[Tensor, "1 N Nf"]
    uncond_text_embeddings: Float[Tensor, "1 N Nf"]
    text_embeddings_vd: Float[Tensor, "Nv N Nf"]
    uncond_text_embeddings_vd: Float[Tensor, "Nv N Nf"]
    directions: List[DirectionConfig]
    direction2idx: Dict[str, int]
    use_perp_neg: bool
    perp_neg_f_sb: Tuple[float, float, float]
    perp_neg_f_fsb: Tuple[float, float, float]
    perp_neg_f_fs: Tuple[float, float, float]
    perp_neg_f_sf: Tuple[float, float, float]
    prompt: str
    prompts_vd: List[str]

    def get_direction_indices(
        self,
        elevation: Float[Tensor, "B"],
        azimuth: Float[Tensor, "B"],
        camera_distances: Float[Tensor, "B"],
    ) -> Int[Tensor, "B"]:
        """Direction index of each camera; directions later in the list override earlier ones."""
        direction_idx = torch.zeros_like(elevation, dtype=torch.long)
        for direction in self.directions:
            mask = direction.condition(elevation, azimuth, camera_distances)
            direction_idx[mask] = self.direction2idx[direction.name]
        return direction_idx

    def get_text_embeddings(
        self,
        elevation: Float[Tensor, "B"],
        azimuth: Float[Tensor, "B"],
        camera_distances: Float[Tensor, "B"],
        view_dependent_prompting: bool = True,
    ) -> Float[Tensor, "BB N Nf"]:
        """``[2B, 77, D]``: the B conditional embeddings first, then the B unconditional ones.

        Note the order (cond, uncond), which threestudio's guidance relies on and which differs from
        diffusers' pipelines (uncond first).
        """
        batch_size = elevation.shape[0]
        if view_dependent_prompting:
            idx = self.get_direction_indices(elevation, azimuth, camera_distances)
            idx = idx.to(self.text_embeddings_vd.device)
            cond = self.text_embeddings_vd[idx]
            uncond = self.uncond_text_embeddings_vd[idx]
        else:
            cond = self.text_embeddings.expand(batch_size, -1, -1)
            uncond = self.uncond_text_embeddings.expand(batch_size, -1, -1)
        return torch.cat([cond, uncond], dim=0)

    def get_text_embeddings_perp_neg(
        self,
        elevation: Float[Tensor, "B"],
        azimuth: Float[Tensor, "B"],
        camera_distances: Float[Tensor, "B"],
        view_dependent_prompting: bool = True,
    ) -> Tuple[Float[Tensor, "BBBB N Nf"], Float[Tensor, "B 2"]]:
        """Perp-Neg embeddings ``[4B, 77, D]`` = (B positives, B unconds, 2B negatives interleaved
        per camera) and the negative guidance weights ``[B, 2]`` (Armandpour et al. 2023, as in
        threestudio).

        With ``a = |shift(azimuth)|`` in degrees and ``f(a, b, c; r) = a·exp(-b·r) + c``:

        - overhead cameras: positive = overhead prompt; negatives = the negative prompt twice with
          weight 0;
        - ``a < 90`` (front to side), ``r = 1 - a/90``: positive = ``r·front + (1-r)·side``;
          negatives (front, side) with weights ``(-f_fs(r), -f_sf(1-r))``;
        - otherwise (side to back), ``r = 2 - a/90``: positive = ``r·side + (1-r)·back``;
          negatives (side, front) with weights ``(-f_sb(r), -f_fsb(r))``.
        """
        assert view_dependent_prompting, "Perp-Neg only works with view-dependent prompting"
        batch_size = elevation.shape[0]
        emb = self.text_embeddings_vd
        side, front, back, overhead = (emb[self.direction2idx[n]] for n in ("side", "front", "back", "overhead"))

        idx = self.get_direction_indices(elevation, azimuth, camera_distances)
        is_overhead = (idx == self.direction2idx["overhead"]).to(emb.device)
        abs_azimuth = shift_azimuth_deg(azimuth).abs().to(emb.device)
        is_front_half = abs_azimuth < 90

        # interpolation ratio; r_fs for the front-side half, r_sb for the side-back half
        r_fs = 1 - abs_azimuth / 90
        r_sb = 2.0 - abs_azimuth / 90

        def per_camera(mask):
            return mask[:, None, None]

        def blend(r, a, b):
            return r[:, None, None] * a + (1 - r[:, None, None]) * b

        positive = torch.where(
            per_camera(is_front_half), blend(r_fs, front, side), blend(r_sb, side, back)
        )
        positive = torch.where(per_camera(is_overhead), overhead.expand_as(positive), positive)

        uncond = self.uncond_text_embeddings_vd[idx.to(emb.device)]

        neg_first = torch.where(per_camera(is_front_half), front, side)
        neg_second = torch.where(per_camera(is_front_half), side, front)
        neg_first = torch.where(per_camera(is_overhead), uncond, neg_first)
        neg_second = torch.where(per_camera(is_overhead), uncond, neg_second)
        # [B, 2, 77, D] -> [2B, 77, D]: the two negatives of camera i sit at rows 2i and 2i+1
        negatives = torch.stack([neg_first, neg_second], dim=1).flatten(0, 1)

        weight_first = torch.where(
            is_front_half,
            -shifted_exponential_decay(*self.perp_neg_f_fs, r_fs),
            -shifted_exponential_decay(*self.perp_neg_f_sb, r_sb),
        )
        weight_second = torch.where(
            is_front_half,
            -shifted_exponential_decay(*self.perp_neg_f_sf, 1 - r_fs),
            -shifted_exponential_decay(*self.perp_neg_f_fsb, r_sb),
        )
        weights = torch.stack([weight_first, weight_second], dim=-1)
        weights = torch.where(is_overhead[:, None], torch.zeros_like(weights), weights)

        text_embeddings = torch.cat([positive, uncond, negatives], dim=0)
        return text_embeddings, weights.to(elevation.device).reshape(batch_size, 2)


class PromptProcessor(BaseObject):
    """Turns ``cfg.prompt`` (and the negative and view-dependent prompts) into text embeddings.

    Subclasses provide ``spawn_func(pretrained_model_name_or_path, prompts, cache_dir)``, which
    encodes ``prompts`` and writes one ``[77, D]`` tensor per prompt to
    ``cache_dir/<hash_prompt(model, prompt)>.pt``.

    After construction ``prompts_computed`` lists the prompts this instance had to encode (empty when
    every embedding came from the cache).
    """

    @dataclass
    class Config(BaseObject.Config):
        prompt: str = "a hamburger"

        # view-dependent prompts given by hand, used verbatim instead of the templates
        prompt_front: Optional[str] = None
        prompt_side: Optional[str] = None
        prompt_back: Optional[str] = None
        prompt_overhead: Optional[str] = None

        negative_prompt: str = ""
        pretrained_model_name_or_path: str = "runwayml/stable-diffusion-v1-5"
        overhead_threshold: float = 60.0
        front_threshold: float = 45.0
        back_threshold: float = 45.0
        view_dependent_prompt_front: bool = False
        use_cache: bool = True
        # kept for threestudio configs; the host always encodes in-process (see the module docstring)
        spawn: bool = True

        # Perp-Neg: weight curves a·exp(-b·r) + c as (a, b, c)
        use_perp_neg: bool = False
        perp_neg_f_sb: Tuple[float, float, float] = (1, 0.5, -0.606)
        perp_neg_f_fsb: Tuple[float, float, float] = (1, 0.5, +0.967)
        perp_neg_f_fs: Tuple[float, float, float] = (4, 0.5, -2.426)  # f_fs(1) = 0
        perp_neg_f_sf: Tuple[float, float, float] = (4, 0.5, -2.426)

        # prompt debiasing (threestudio: BERT masked-LM); not supported by the bundled host
        use_prompt_debiasing: bool = False
        pretrained_model_name_or_path_prompt_debiasing: str = "bert-base-uncased"
        # indices of the words that may be removed
        prompt_debiasing_mask_ids: Optional[List[int]] = None

    cfg: Config

    # ---- the text encoder, for subclasses that encode on demand (threestudio keeps these for debugging)
    @rank_zero_only
    def configure_text_encoder(self) -> None:
        raise NotImplementedError

    @rank_zero_only
    def destroy_text_encoder(self) -> None:
        raise NotImplementedError

    def get_text_embeddings(
        self, prompt: Union[str, List[str]], negative_prompt: Union[str, List[str]]
    ) -> Tuple[Float[Tensor, "B ..."], Float[Tensor, "B ..."]]:
        raise NotImplementedError

    @staticmethod
    def spawn_func(pretrained_model_name_or_path: str, prompts: List[str], cache_dir: str) -> None:
        raise NotImplementedError

    # ---- construction
    def configure(self) -> None:
        self._cache_dir = TEXT_EMBEDDINGS_CACHE_DIR
        self.directions: List[DirectionConfig] = make_view_directions(self.cfg)
        self.direction2idx = {d.name: i for i, d in enumerate(self.directions)}

        self.prompt_library = self.load_prompt_library()
        self.prompt = self.preprocess_prompt(self.cfg.prompt)
        self.negative_prompt = self.cfg.negative_prompt
        info(f"Using prompt [{self.prompt}] and negative prompt [{self.negative_prompt}]")

        if self.cfg.use_prompt_debiasing:
            prompts = self.get_debiased_prompt(self.prompt)
            self.prompts_vd = [d.prompt(p) for d, p in zip(self.directions, prompts)]
        else:
            # a hand-written view prompt replaces the template (and is not rewritten)
            self.prompts_vd = [
                self.cfg.get(f"prompt_{d.name}", None) or d.prompt(self.prompt) for d in self.directions
            ]
        shown = " ".join(f"[{d.name}]:[{p}]" for d, p in zip(self.directions, self.prompts_vd))
        info(f"Using view-dependent prompts {shown}")
        self.negative_prompts_vd = [d.negative_prompt(self.negative_prompt) for d in self.directions]

        self.prompts_computed: List[str] = []
        self.prepare_text_embeddings()
        self.load_text_embeddings()

    def load_prompt_library(self) -> Dict[str, Any]:
        """``load/prompt_library.json`` (relative to the working directory), or ``{}`` if absent."""
        from ....prompt_library import read_prompt_library

        return read_prompt_library(PROMPT_LIBRARY_PATH)

    def preprocess_prompt(self, prompt: str) -> str:
        """Resolve ``lib:kw1_kw2``: the one DreamFusion library prompt containing every keyword
        (case-insensitive). Other prompts pass through."""
        if not prompt.startswith("lib:"):
            return prompt
        keywords = prompt[len("lib:"):].lower().split("_")
        if not os.path.exists(PROMPT_LIBRARY_PATH):
            raise ConfigError(
                f"prompt '{prompt}' uses the prompt library, but {PROMPT_LIBRARY_PATH} does not exist "
                f"in the working directory {os.getcwd()}: run from a folder that has it, or write the prompt out."
            )
        library = self.prompt_library.get("dreamfusion")
        if not isinstance(library, list):
            raise ConfigError(
                f"prompt '{prompt}' uses the prompt library, but {PROMPT_LIBRARY_PATH} has no "
                "'dreamfusion' list of prompts: fix the file, or write the prompt out."
            )
        matches = [p for p in library if all(k in p.lower() for k in keywords)]
        if len(matches) > 1:
            raise ConfigError(
                f"prompt '{prompt}': keywords {keywords} match {len(matches)} prompts in "
                f"{PROMPT_LIBRARY_PATH} ({matches[:3]}...): add keywords to pick one."
            )
        if not matches:
            raise ConfigError(
                f"prompt '{prompt}': no prompt in {PROMPT_LIBRARY_PATH} contains all of {keywords}: "
                "change the keywords, or write the prompt out."
            )
        info("Find matched prompt in library: " + matches[0])
        return matches[0]

    def get_debiased_prompt(self, prompt: str) -> List[str]:
        raise ConfigError(
            "use_prompt_debiasing=true is not supported by the bundled threestudio host (it needs a BERT "
            "masked-LM): set system.prompt_processor.use_prompt_debiasing=false, or run inside threestudio."
        )

    # ---- the embedding cache
    def cache_path(self, prompt: str) -> str:
        return os.path.join(
            self._cache_dir, f"{hash_prompt(self.cfg.pretrained_model_name_or_path, prompt)}.pt"
        )

    def model_fingerprint(self) -> Optional[str]:
        """A hash of the model files that decide the embeddings, stored with each cache entry so an
        entry made by another model at the same path is not reused; None: not checked."""
        return None

    @staticmethod
    def read_cache_file(path: str) -> Tensor:
        """A cache entry as saved (on the CPU); raises ``ValueError`` saying why when the file is not a
        finite ``[tokens, width]`` float tensor (e.g. truncated)."""
        try:
            embedding = torch.load(path, map_location="cpu")
        except Exception as e:  # truncated zip, garbage bytes, an unpickling error
            first = " ".join(str(e).split()).split(". ")[0][:160]  # torch's reasons run on for lines
            raise ValueError(f"{type(e).__name__}: {first or 'unreadable'}") from None
        if not isinstance(embedding, Tensor) or embedding.ndim != 2 or not embedding.is_floating_point():
            raise ValueError(f"holds {type(embedding).__name__} {getattr(embedding, 'shape', '')}, not a [tokens, width] tensor")
        if not bool(torch.isfinite(embedding).all()):
            raise ValueError("holds non-finite values")
        return embedding

    def cache_entry_is_usable(self, prompt: str, fingerprint: Optional[str]) -> bool:
        """Whether the cached embedding of ``prompt`` can be used as is; says why (one line) when a
        file that exists cannot."""
        path = self.cache_path(prompt)
        if not os.path.exists(path):
            return False
        try:
            embedding = self.read_cache_file(path)
        except ValueError as e:
            warn(f"Text embedding cache file {path} (prompt [{prompt}]) is truncated or unreadable ({e}): recomputing it.")
            return False
        stored = getattr(embedding, FINGERPRINT_ATTRIBUTE, None)
        if fingerprint is not None and stored != fingerprint:
            if stored is None:  # threestudio's (or an older host's) entry: nothing says which model made it
                info(f"Text embedding cache file {path} (prompt [{prompt}]) has no model fingerprint: recomputing it.")
            else:
                warn(
                    f"Text embedding cache file {path} (prompt [{prompt}]) was computed by other files at "
                    f"{self.cfg.pretrained_model_name_or_path} (model fingerprint {stored}, now {fingerprint}): "
                    "recomputing it."
                )
            return False
        return True

    @rank_zero_only
    def prepare_text_embeddings(self) -> None:
        """Encode every prompt that is not cached yet, or whose cache entry is unusable (see the module
        docstring); all of them with ``use_cache=False``."""
        os.makedirs(self._cache_dir, exist_ok=True)
        all_prompts = [self.prompt, self.negative_prompt] + self.prompts_vd + self.negative_prompts_vd
        unique_prompts = list(dict.fromkeys(all_prompts))
        model = self.cfg.pretrained_model_name_or_path
        fingerprint = self.model_fingerprint() if self.cfg.use_cache else None

        to_compute = []
        for prompt in unique_prompts:
            if self.cfg.use_cache and self.cache_entry_is_usable(prompt, fingerprint):
                debug(f"Text embeddings for model {model} and prompt [{prompt}] are already in cache, skip processing.")
                continue
            to_compute.append(prompt)

        if to_compute:
            # In-process even with cfg.spawn (see the module docstring for why).
            self.spawn_func(model, to_compute, self._cache_dir)
            cleanup()
        self.prompts_computed = to_compute
        info(
            f"Text embeddings for {len(unique_prompts)} prompts: {len(to_compute)} computed with {model}, "
            f"{len(unique_prompts) - len(to_compute)} from the cache {self._cache_dir}"
        )

    def load_text_embeddings(self) -> None:
        barrier()  # other ranks wait for rank 0 to fill the cache
        self.text_embeddings = self.load_from_cache(self.prompt)[None, ...]
        self.uncond_text_embeddings = self.load_from_cache(self.negative_prompt)[None, ...]
        self.text_embeddings_vd = torch.stack([self.load_from_cache(p) for p in self.prompts_vd], dim=0)
        self.uncond_text_embeddings_vd = torch.stack(
            [self.load_from_cache(p) for p in self.negative_prompts_vd], dim=0
        )
        debug("Loaded text embeddings.")

    def load_from_cache(self, prompt: str) -> Float[Tensor, "N Nf"]:
        path = self.cache_path(prompt)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"Text embedding file {path} for model {self.cfg.pretrained_model_name_or_path} "
                f"and prompt [{prompt}] not found."
            )
        try:
            return self.read_cache_file(path).to(self.device)
        except ValueError as e:  # damaged after prepare_text_embeddings checked it (another process?)
            raise ConfigError(
                f"Text embedding file {path} for model {self.cfg.pretrained_model_name_or_path} and prompt "
                f"[{prompt}] is unreadable ({e}): delete it and run again."
            ) from None

    def __call__(self) -> PromptProcessorOutput:
        return PromptProcessorOutput(
            text_embeddings=self.text_embeddings,
            uncond_text_embeddings=self.uncond_text_embeddings,
            text_embeddings_vd=self.text_embeddings_vd,
            uncond_text_embeddings_vd=self.uncond_text_embeddings_vd,
            directions=self.directions,
            direction2idx=self.direction2idx,
            use_perp_neg=self.cfg.use_perp_neg,
            perp_neg_f_sb=self.cfg.perp_neg_f_sb,
            perp_neg_f_fsb=self.cfg.perp_neg_f_fsb,
            perp_neg_f_fs=self.cfg.perp_neg_f_fs,
            perp_neg_f_sf=self.cfg.perp_neg_f_sf,
            prompt=self.prompt,
            prompts_vd=self.prompts_vd,
        )
