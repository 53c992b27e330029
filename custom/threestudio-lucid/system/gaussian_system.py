"""``lucid-gaussian-system``: text-to-3D with Gaussian splats and score distillation.

One training step (manual optimisation, as threestudio-3dgs):
1. render the multi-view batch (``comp_rgb``, ``comp_depth``, ``comp_mask`` + densification data);
2. call the guidance; every ``loss_<x>`` it returns is weighted by ``C(system.loss.lambda_<x>)``;
3. add the regularisers (TV on rgb and depth, mean scale, mean opacity), each weighted the same way;
4. backward, hand the screen-space gradients to the geometry (densification on its schedule);
5. step the geometry's optimizer (and the guidance's, when it trains parameters).

Validation writes ``it{step}-{index}.png`` grids (rgb | depth | alpha); test writes
``it{step}-test/{index}.png`` frames, the orbit video ``it{step}-test.mp4`` and the splats as
``point_cloud.ply`` (INRIA layout) under ``save/``; ``--export`` writes ``it{step}-export/`` with the
exporter's files (by default a coloured mesh as ``model.obj/.ply/.glb``) and the splats' PLY.

Nothing is lost or silently wrong:
- numerical guard: a non-finite loss term or gradient (checked after backward, before the optimizer
  step) or a non-finite or runaway parameter (checked after it, before any checkpoint of that step)
  stops the run with one ``NonFiniteError`` line: the step, what went bad, the last good checkpoint and
  a hint. The guidance's cleaned gradient entries are logged as ``train/nonfinite_grad_entries``;
- SIGINT / SIGTERM during training: at the end of the current step a checkpoint
  ``ckpts/interrupted-step=<k>.ckpt`` and the splats ``save/it<k>-interrupted/<ply_name>`` are written,
  with one line saying how to resume; a second signal stops at once;
- every file is written atomically (``atomic_files.py``; checkpoints through ``checkpoint_io.py``,
  installed in ``setup``; under threestudio its image and video writers go through a temporary too):
  a kill leaves the previous file or the new one, a full disk ends in one ``StorageError`` line;
- resume is exact: the checkpoint holds the global random states (torch, CUDA, Python, NumPy), the
  states of the guidance's own generators and, through the geometry and the data module, the
  densification statistics and the camera stream; validation does not move the global generators.
"""
import os
import random
import signal
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from ..compat import USING_REAL_THREESTUDIO, BaseLift3DSystem, find, info, parse_optimizer, register, tv_loss, warn
from ..atomic_files import check_complete_mp4, check_image_decodes, temporary_path, write_bytes, write_text
from ..checkpoint_io import use_atomic_checkpoints
from ..errors import ConfigError, NonFiniteError
from ..guidance.option_ranges import check_schedule_range
from ..prompt_length import check_prompt_lengths, prompt_processor_prompts
from ..prompt_library import read_prompt_library
from ..run_folder import RunFolderTaken, claim_launch_folder, describe_holder, holds, process_rank
from ..rng import generator_states, global_rng_state, set_generator_states, set_global_rng_state
from ..trainer_precision import precision_rule
from . import checkpoint_fit, live_splats

RNG_CHECKPOINT_KEY = "lucid_rng_states"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

REGULARISERS = ("tv", "depth_tv", "scales", "opacity")


def _is_scalar(value: Any) -> bool:
    """A guidance diagnostic worth a log line: a number or a one-element tensor (guidances also
    return per-view tensors and, with ``guidance_eval``, dicts of images)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, torch.Tensor) and value.numel() == 1


@register("lucid-gaussian-system")
class GaussianSplattingSystem(BaseLift3DSystem):
    @dataclass
    class Config(BaseLift3DSystem.Config):
        # --export: a coloured mesh from the splats (threestudio's mesh-exporter needs an implicit
        # geometry); the splats' PLY is written beside it. "dummy-exporter": the PLY only
        exporter_type: str = "lucid-gaussian-mesh-exporter"
        # log scalar guidance diagnostics (grad_norm, timestep bounds, ...) every step
        log_guidance_diagnostics: bool = True
        ply_name: str = "point_cloud.ply"
        # LucidDreamer's recipe (0 / "depth" = threestudio behaviour)
        guidance_flip_prob: float = 0.0  # LD 0.5: flip the batch horizontally before a camera-free guidance
        depth_as_latent_prob: float = 0.0  # LD 0.2: guide the depth map (3 channels) instead of rgb
        depth_map: str = "depth"  # "depth" (comp_depth) | "disparity" (normalised inverse depth, LD-style)
        # at test, score the asset with the evaluator the guidance's model folder names ("_lucid_evaluator" in
        # its model_index.json: a toy world names lucid-toy-world-evaluator, which scores against the world's
        # held-out ground truth), or the registered evaluator_type; evaluator: its options (e.g. oracle_scores)
        toy_world_eval: bool = False
        evaluator_type: str = ""
        evaluator: dict = field(default_factory=dict)
        # with toy_world_eval: also score the asset every N training steps (the evaluator's evaluate_progress: its
        # own progress file under save/, each score against the step, for convergence curves); 0 = at test only
        evaluate_every_n_steps: int = 0
        # numerical guard: a Gaussian farther than this from the origin (world units; the object sits
        # within ~1, cameras at ~2-6) means the optimisation ran away; 0 disables the bound
        divergence_bound: float = 1000.0
        # live preview: the splats to save/live/<ply_name> (atomically) every N training steps, at most one write
        # per live_ply_min_seconds; 0 = off (system/live_splats.py)
        live_ply_every_n_steps: int = 0
        live_ply_min_seconds: float = 2.0

    cfg: Config

    DEPTH_MAPS = ("depth", "disparity")

    def configure(self) -> None:
        self._live_splats = live_splats.callbacks_of(self.cfg)  # checks system.live_ply_*
        if self.cfg.depth_map not in self.DEPTH_MAPS:
            raise ConfigError(f"system.depth_map='{self.cfg.depth_map}' must be one of {', '.join(self.DEPTH_MAPS)}.")
        if not self.cfg.divergence_bound >= 0:
            raise ConfigError(f"system.divergence_bound={self.cfg.divergence_bound} must be >= 0 (0 disables it).")
        every = self.cfg.evaluate_every_n_steps
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ConfigError(f"system.evaluate_every_n_steps={every!r} must be a whole number >= 0 (0: score at "
                              "test only).")
        if every and not self.cfg.toy_world_eval:
            raise ConfigError(f"system.evaluate_every_n_steps={every} scores the asset with the evaluator of "
                              "system.toy_world_eval, which is off: set system.toy_world_eval=true or "
                              "system.evaluate_every_n_steps=0.")
        for key, value in self.cfg.loss.items():  # weights: numbers or C() schedules, checked before any model loads
            check_schedule_range(f"system.loss.{key}", value, 0.0, why="a loss weight; 0 disables the term",
                                 example=1.0)
        # what every step reads, read once: an OmegaConf attribute costs ~10 us, and a small step made
        # dozens of them (the weights stay ListConfig or numbers: threestudio's C() refuses plain lists)
        self._loss_weights: Dict[str, Any] = dict(self.cfg.loss.items())
        self._step_settings = {key: self.cfg[key] for key in ("depth_as_latent_prob", "guidance_flip_prob",
                                                                "log_guidance_diagnostics", "divergence_bound",
                                                                "evaluate_every_n_steps")}
        self.stop_signal: Optional[int] = None
        self.interrupted_checkpoint: Optional[str] = None
        self._previous_handlers: Dict[int, Any] = {}
        super().configure()
        self.automatic_optimization = False
        self.guidance = find(self.cfg.guidance_type)(self.cfg.guidance)
        if self.cfg.guidance_flip_prob > 0 and getattr(self.guidance, "conditions_on_camera", False):
            raise ConfigError(
                f"system.guidance_flip_prob={self.cfg.guidance_flip_prob} mirrors renders without mirroring the camera, "
                f"but {self.cfg.guidance_type} is camera-conditioned: set system.guidance_flip_prob=0."
            )
        self.check_prompt_lengths()
        if USING_REAL_THREESTUDIO:  # its prompt processor json.load()s the library file: a broken one, one line
            read_prompt_library()
        self.evaluator = self.make_evaluator()  # before the prompt processor: a bad prompt fails at once
        if self.cfg.evaluate_every_n_steps and not callable(getattr(self.evaluator, "evaluate_progress", None)):
            raise ConfigError(f"system.evaluate_every_n_steps={self.cfg.evaluate_every_n_steps}: the evaluator "
                              f"{type(self.evaluator).__name__} scores at test only (it has no evaluate_progress); "
                              "set system.evaluate_every_n_steps=0.")
        self.prompt_processor = find(self.cfg.prompt_processor_type)(self.cfg.prompt_processor)
        self.prompt_utils = self.prompt_processor()

    def check_prompt_lengths(self) -> None:
        """threestudio's own Stable Diffusion prompt processor neither truncates nor checks: a prompt
        over the text encoder's 77 tokens crashes in its spawned child as "prompt embedding process
        failed!". Count the tokens first and name the key instead (the bundled host checks itself)."""
        if not USING_REAL_THREESTUDIO or self.cfg.prompt_processor_type != "stable-diffusion-prompt-processor":
            return
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(
                self.cfg.prompt_processor.pretrained_model_name_or_path, subfolder="tokenizer"
            )
        except (OSError, ValueError):  # not loadable here: threestudio reports it when it loads the encoder
            return
        check_prompt_lengths(tokenizer, prompt_processor_prompts(self.cfg.prompt_processor))

    EVALUATOR_KEY = "_lucid_evaluator"  # in a model folder's model_index.json: the registered evaluator it wants

    def make_evaluator(self):
        """The evaluation hook of ``toy_world_eval`` (None without it): ``evaluator_type``, or the registered
        evaluator the guidance's model folder names, configured now (it checks the prompt against what it
        scores) with the model folder, the prompt and ``system.evaluator``."""
        if not self.cfg.toy_world_eval:
            return None
        from ..guidance.diffusion_base import model_index_of

        model = self.cfg.guidance.get("pretrained_model_name_or_path")
        name = self.cfg.evaluator_type or ((model_index_of(model) or {}).get(self.EVALUATOR_KEY) if model else None)
        if not name:
            raise ConfigError(
                f"system.toy_world_eval=true scores the asset with the evaluator the model folder names "
                f"('{self.EVALUATOR_KEY}' in its model_index.json), but system.guidance.pretrained_model_name_or_path="
                f"'{model}' names none: point it at a toy world made with `lucid-build-toy-world` (rebuild one made "
                "before it named its evaluator), set system.evaluator_type, or set system.toy_world_eval=false."
            )
        return find(name)({"model": model, "prompt": self.cfg.prompt_processor.prompt, **self.cfg.evaluator})

    # ---- optimisation ----
    def configure_optimizers(self):
        """The geometry's own Adam (named groups, densification-aware); trainable guidance parts
        (e.g. VSD's LoRA) get ``system.optimizer`` when set."""
        optimizers = [self.geometry.optimizer]
        if self.trainable_guidance_parameters():
            if not self.cfg.optimizer or "name" not in self.cfg.optimizer:
                raise ConfigError(
                    f"{self.cfg.guidance_type} trains parameters: set system.optimizer "
                    "(e.g. name: AdamW, args: {lr: 0.0001}, params: {guidance: {}})."
                )
            optimizers.append(parse_optimizer(self.cfg.optimizer, self))
        return optimizers

    def trainable_guidance_parameters(self) -> List[torch.nn.Parameter]:
        """What the guidance trains. Any threestudio guidance is accepted: most of threestudio's own
        (stable-diffusion, deepfloyd, zero123, ...) are plain ``BaseObject``s, not torch modules, and
        train nothing."""
        if not isinstance(self.guidance, torch.nn.Module):
            return []
        return [p for p in self.guidance.parameters() if p.requires_grad]

    def _weighted(self, name: str, value: torch.Tensor, logs: Dict[str, Any]) -> torch.Tensor:
        key = "lambda_" + name[len("loss_"):]
        if key not in self._loss_weights:
            raise ConfigError(f"'{name}' needs a weight: set system.loss.{key} (0 disables it).")
        weight = self.C(self._loss_weights[key])
        logs[f"train_params/{key}"] = float(weight)
        return value * weight

    def logging_this_step(self) -> bool:
        """Whether Lightning writes this training step's metrics (every ``trainer.log_every_n_steps``
        steps, and the last): ``self.log`` costs ~0.3 ms a call, more than a small step's compositing."""
        connector = getattr(self._trainer, "_logger_connector", None) if self._trainer is not None else None
        should = getattr(connector, "should_update_logs", True)
        return bool(should)

    def log_step(self, logs: Dict[str, Any]) -> None:
        """One ``log_dict`` for the step's scalars (detached; the loss and Gaussian count also in the
        progress bar)."""
        values = {k: v.detach() if torch.is_tensor(v) else float(v) for k, v in logs.items()}
        bar = {k: values.pop(k) for k in ("train/loss", "gauss_num") if k in values}
        self.log_dict(values)
        self.log_dict(bar, prog_bar=True)

    def regularisers(self, out: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """Only the terms whose weight is non-zero now are computed."""
        losses = {}
        active = {r for r in REGULARISERS if self.C(self._loss_weights.get(f"lambda_{r}", 0.0)) > 0}
        if "tv" in active:
            losses["loss_tv"] = tv_loss(out["comp_rgb"].permute(0, 3, 1, 2))
        if "depth_tv" in active:
            losses["loss_depth_tv"] = tv_loss(self.depth_image(out).permute(0, 3, 1, 2))
        if "scales" in active:
            losses["loss_scales"] = self.geometry.get_scaling.mean()
        if "opacity" in active:
            losses["loss_opacity"] = self.geometry.get_opacity.mean()
        return losses

    def depth_image(self, out: Dict[str, Any]) -> torch.Tensor:
        """The depth map used by the depth regulariser and depth-as-latent steps, [B,H,W,1].

        ``disparity``: inverse expected depth, normalised per view to [0, 1] over the object
        (alpha > 0.1; background 0). LucidDreamer normalises a disparity too, but its formula is tied
        to its rasterizer fork's depth output; this is the same idea on our depth definition."""
        if self.cfg.depth_map == "depth":
            return out["comp_depth"]
        alpha = out["comp_mask"]
        expected = out["comp_depth"] / alpha.clamp_min(1e-6)
        mask = alpha > 0.1
        disp = torch.where(mask, 1.0 / expected.clamp_min(1e-6), torch.zeros_like(expected))
        flat_disp, flat_mask = disp.flatten(1), mask.flatten(1)
        hi = flat_disp.amax(dim=1)
        lo = torch.where(flat_mask, flat_disp, torch.full_like(flat_disp, float("inf"))).amin(dim=1)
        lo = torch.where(torch.isfinite(lo), lo, torch.zeros_like(lo))
        scale = (hi - lo).clamp_min(1e-6)
        normed = (disp - lo.view(-1, 1, 1, 1)) / scale.view(-1, 1, 1, 1)
        return torch.where(mask, normed.clamp(0, 1), torch.zeros_like(normed))

    def guidance_input(self, out: Dict[str, Any]) -> torch.Tensor:
        """What the guidance sees: rgb, or (depth-as-latent) the depth map; optionally mirrored."""
        return self.guidance_inputs(out)[0]

    def guidance_inputs(self, out: Dict[str, Any]):
        """``(image, extra guidance arguments)``: the image of ``guidance_input``, and for a guidance with a
        depth ControlNet the depth map as ``control_depth``, mirrored with the image."""
        image = out["comp_rgb"]
        control = self.depth_image(out) if getattr(self.guidance, "uses_control_depth", False) else None
        depth_prob, flip_prob = self._step_settings["depth_as_latent_prob"], self._step_settings["guidance_flip_prob"]
        if depth_prob > 0 and random.random() < depth_prob:
            image = (control if control is not None else self.depth_image(out)).repeat(1, 1, 1, 3)
        if flip_prob > 0 and random.random() < flip_prob:
            image = image.flip(2)
            control = None if control is None else control.flip(2)
        return image, ({} if control is None else {"control_depth": control})

    def training_step(self, batch, batch_idx):
        # Host-device synchronisations of a step on a GPU, all unavoidable (each commented where it is):
        # the renderer reads the batch's fovy once (focal lengths are settings of the CUDA libraries); ISM
        # draws its timestep index (it sets the number of inversion steps); the numerical guard reads one
        # fused norm after backward and one after the optimizer step (the run must stop before either the
        # optimizer step or a checkpoint). Logging steps (every trainer.log_every_n_steps) and
        # densification steps (their masks) add theirs.
        out = self.renderer(**batch)
        image, extra = self.guidance_inputs(out)
        guidance_out = self.guidance(image, self.prompt_utils, **batch, **extra)

        logs: Dict[str, Any] = {}
        loss, terms = 0.0, {}
        for name, value in guidance_out.items():
            if name.startswith("loss_"):
                logs[f"train/{name}"] = value
                terms[name] = self._weighted(name, value, logs)
                loss = loss + terms[name]
            elif self._step_settings["log_guidance_diagnostics"] and _is_scalar(value):
                logs[f"train/{name}"] = value
        for name, value in self.regularisers(out).items():
            logs[f"train/{name}"] = value
            terms[name] = self._weighted(name, value, logs)
            loss = loss + terms[name]
        logs["train/loss"] = loss
        logs["gauss_num"] = self.geometry.num_points
        cleaned = getattr(self.guidance, "nonfinite_grad_entries", None)
        if cleaned is not None:
            logs["train/nonfinite_grad_entries"] = cleaned.float() if torch.is_tensor(cleaned) else cleaned
        if self.logging_this_step():
            self.log_step(logs)

        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        self.manual_backward(loss)
        self.check_loss_and_gradients(loss, terms)
        self.geometry.update_states(
            self.true_global_step, out["visibility_filter"], out["radii"], out["viewspace_points"]
        )
        # Lightning counts every LightningOptimizer.step() as a global step: step the geometry's
        # through Lightning (one global step per iteration) and the others through the strategy.
        optimizers[0].step()
        for opt in optimizers[1:]:
            self.trainer.strategy.optimizer_step(opt.optimizer, lambda: None)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        self.check_parameters()
        return {"loss": loss.detach()}

    # ---- numerical guard ----
    # Each check is one fused reduction over all tensors and one host-device synchronisation per step
    # (unavoidable: the run must stop at this step, before its optimizer step or its checkpoint): the
    # norms of finite tensors are finite, so NaN/inf anywhere shows in one scalar (as clip_grad_norm_
    # finds it; 20x cheaper than isfinite on each). The entries are only looked at when that scalar is
    # not finite, and a norm that merely overflowed (|x| > 1e19) is then let through.
    @staticmethod
    def _finite_sum(tensors) -> torch.Tensor:
        tensors = [t.detach() for t in tensors if t.numel()]
        return torch.stack(torch._foreach_norm(tensors)).sum() if tensors else torch.zeros(())

    def check_loss_and_gradients(self, loss: torch.Tensor, terms: Dict[str, torch.Tensor]) -> None:
        grads = {name: p.grad for name, p in self.geometry.gaussian_parameters().items() if p.grad is not None}
        if bool(torch.isfinite(self._finite_sum([loss.reshape(1)] + list(grads.values())))):
            return
        bad_terms = [f"{name}={float(v.detach()):.4g}" for name, v in terms.items() if not torch.isfinite(v).all()]
        bad = {name: int((~torch.isfinite(g)).sum()) for name, g in grads.items() if not torch.isfinite(g).all()}
        if bad_terms:
            what = f"the loss is not finite ({', '.join(bad_terms)})"
        elif bad:
            what = "non-finite gradients of the Gaussians' " + ", ".join(f"{n} ({c} entries)" for n, c in bad.items())
        else:
            return  # only a norm overflowed: every entry is finite
        self.stop_diverged(what, "lower the learning rates (system.geometry.*_lr) or system.guidance.guidance_scale, "
                                 "or clip the guidance gradient with system.guidance.grad_clip")

    def check_parameters(self) -> None:
        params = self.geometry.gaussian_parameters()
        bound = self._step_settings["divergence_bound"]
        xyz = params["xyz"].detach()
        low, high = torch.aminmax(xyz) if xyz.numel() else (torch.zeros(()), torch.zeros(()))
        finite = torch.isfinite(self._finite_sum(params.values()))
        if bool(finite & (high <= bound) & (low >= -bound) if bound > 0 else finite):
            return
        bad = {n: int((~torch.isfinite(p)).sum()) for n, p in params.items() if not torch.isfinite(p).all()}
        if bad:
            what = "the optimizer step made Gaussian parameters non-finite: " + ", ".join(
                f"{n} ({c} entries)" for n, c in bad.items())
        elif bound > 0 and max(-float(low), float(high)) > bound:
            what = (f"the Gaussians ran away: one is {max(-float(low), float(high)):.3g} from the origin, beyond "
                    f"system.divergence_bound={bound:g}")
        else:
            return  # only a norm overflowed
        self.stop_diverged(what, "lower the learning rates (system.geometry.position_lr, scaling_lr, ...)")

    def stop_diverged(self, what: str, hint: str) -> None:
        last = self.last_checkpoint()
        where = f"the last good checkpoint is {last}" if last else "no checkpoint was written before it"
        raise NonFiniteError(f"training diverged at step {self.true_global_step}: {what}; {where} "
                             f"(nothing later is saved); {hint}")

    def checkpoint_dir(self) -> Optional[str]:
        callback = getattr(self.trainer, "checkpoint_callback", None) if self._trainer is not None else None
        if callback is not None and getattr(callback, "dirpath", None):
            return callback.dirpath
        if self._save_dir is not None:  # threestudio's layout: <trial>/ckpts beside <trial>/save
            return os.path.join(os.path.dirname(os.path.abspath(self._save_dir)), "ckpts")
        return None

    def last_checkpoint(self) -> Optional[str]:
        folder = self.checkpoint_dir()
        if not folder or not os.path.isdir(folder):
            return None
        ckpts = [os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".ckpt")]
        named = [c for c in ckpts if not os.path.basename(c).startswith("last")]  # last.ckpt copies one of them
        return max(named or ckpts, key=os.path.getmtime) if ckpts else None

    # ---- the run folder ----
    def set_save_dir(self, save_dir: str):
        """Claim the run folder (``run_folder.py``) before anything is written there. Under
        ``lucid-launch`` it is already claimed; threestudio's launch.py calls this with
        ``<trial>/save`` right after building the system, before its callbacks and loggers touch the
        folder, so a launch that finds its folder taken moves to the next free timestamp here."""
        trial_dir = os.path.dirname(os.path.abspath(save_dir))
        if os.path.basename(os.path.normpath(save_dir)) == "save" and process_rank() == 0 and not holds(trial_dir):
            try:
                trial_dir = claim_launch_folder(trial_dir, self._resumed, say=info)
            except RunFolderTaken as taken:
                raise ConfigError(
                    f"The run folder '{taken.folder}' is {describe_holder(taken.holder, taken.live)}: start the "
                    "launch again (a new second gives a new folder) or set another tag (tag=...)."
                ) from None
            save_dir = os.path.join(trial_dir, "save")
        super().set_save_dir(save_dir)

    # ---- exact resume ----
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint[RNG_CHECKPOINT_KEY] = {
            "global": global_rng_state(),
            "guidance": generator_states(self.guidance),
        }
        # what the run is made of, so that a resume into another config can name both (checkpoint_fit.py)
        checkpoint[checkpoint_fit.COMPONENTS_KEY] = checkpoint_fit.component_record(self)

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        # Lightning calls this before its strict load_state_dict (resume= in every mode, both hosts):
        # a checkpoint of another guidance, geometry or system ends here in one line
        path = getattr(self._trainer, "ckpt_path", None) if self._trainer is not None else None
        note = checkpoint_fit.check_resume(self, checkpoint, str(path) if path else None)
        if note:
            warn(note)
        states = checkpoint.get(RNG_CHECKPOINT_KEY)
        if states is None:
            return
        set_global_rng_state(states["global"])
        set_generator_states(self.guidance, states.get("guidance", {}))
        # a checkpoint written before its step's validation: Lightning runs that validation on restart
        self._rng_after_train_step = states["global"]

    def on_validation_epoch_end(self):
        # validation must not move the generators training draws from (a resumed run skips the one at
        # its checkpoint's step): back to the state after the last training step, which also undoes the
        # base seed the validation loader's iterator drew before any validation hook ran
        state = self.__dict__.pop("_rng_after_train_step", None)
        if state is not None:
            set_global_rng_state(state)

    def on_fit_start(self) -> None:
        # inside threestudio the Trainer is built after the system: its precision is first seen here
        precision = getattr(self.trainer, "precision", None)
        if precision is not None and precision_rule(precision):
            raise ConfigError(f"trainer.precision={precision!r} {precision_rule(precision)}")
        super().on_fit_start()

    # ---- interruption ----
    def on_train_start(self) -> None:
        # here, not in on_fit_start: Lightning installs its own SIGTERM handler between the two, and
        # that one ends fit() with SystemExit(None) at the next step, i.e. exit status 0
        self.stop_signal = None
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for signum in STOP_SIGNALS:
            self._previous_handlers[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_stop_signal)

    def _on_stop_signal(self, signum, frame) -> None:
        if self.stop_signal is not None:  # asked twice: stop now, the usual way
            self._restore_signal_handlers()
            raise KeyboardInterrupt
        self.stop_signal = signum
        print(f"\n{signal.Signals(signum).name} received: stopping after this step, saving a checkpoint and "
              "the splats (send it again to stop at once)", flush=True)

    def _restore_signal_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous_handlers = {}

    def on_fit_end(self) -> None:
        self._restore_signal_handlers()

    def on_train_end(self) -> None:
        """The end state is always checkpointed: with max_steps not a multiple of
        checkpoint.every_n_train_steps, Lightning before 2.2 writes no last.ckpt for it."""
        callback = getattr(self.trainer, "checkpoint_callback", None)
        if callback is None or not getattr(callback, "save_last", False) or self.interrupted_checkpoint:
            return
        if getattr(callback, "_last_global_step_saved", None) == self.trainer.global_step:
            return
        self.trainer.save_checkpoint(os.path.join(callback.dirpath, "last.ckpt"))

    def on_train_batch_end(self, outputs, batch, batch_idx):
        super().on_train_batch_end(outputs, batch, batch_idx)
        self._rng_after_train_step = global_rng_state()
        every = self._step_settings["evaluate_every_n_steps"]
        if every and self.evaluator is not None and self.true_global_step % every == 0:
            self.evaluator.evaluate_progress(self)
            set_global_rng_state(self._rng_after_train_step)  # scoring must not move training's generators
        if self.stop_signal is not None and self.interrupted_checkpoint is None:
            self.save_interrupted()

    def save_interrupted(self) -> None:
        """After the step in progress: a checkpoint and the PLY, one line on how to resume, then stop."""
        step = self.true_global_step
        folder = self.checkpoint_dir() or "."
        ckpt = os.path.join(folder, f"interrupted-step={step}.ckpt")
        self.trainer.save_checkpoint(ckpt)
        ply = self.get_save_path(f"it{step}-interrupted/{self.cfg.ply_name}") if self._save_dir else None
        if ply is not None:
            self.geometry.save_ply(ply)
        self.interrupted_checkpoint = ckpt
        self.trainer.should_stop = True
        trial = os.path.dirname(os.path.abspath(folder))
        launcher = "python launch.py" if USING_REAL_THREESTUDIO else "lucid-launch"
        print(f"\n{signal.Signals(self.stop_signal).name}: stopped at step {step}; checkpoint {ckpt}"
              f"{f', splats {ply}' if ply else ''}. Resume with: {launcher} --config "
              f"{os.path.join(trial, 'configs', 'parsed.yaml')} --train resume={ckpt}", flush=True)

    # ---- weights of another run (system.weights) ----
    def load_weights(self, weights: str, ignore_modules: Optional[List[str]] = None):
        """threestudio's ``BaseSystem.load_weights`` (``load_module_weights``, then
        ``load_state_dict(strict=False)`` and ``do_update_step(..., on_load_weights=True)``), with one
        line instead of a traceback for a missing or damaged file, and instead of silence for a module
        that does not fit (``strict=False`` would skip it): see ``checkpoint_fit.py``."""
        checkpoint = checkpoint_fit.read_weights(weights)
        ignore = list(ignore_modules or [])
        state = {k: v for k, v in checkpoint["state_dict"].items() if not any(k.startswith(m + ".") for m in ignore)}
        checkpoint_fit.check_weights(self, checkpoint, state, weights, ignore)
        self.load_state_dict(state, strict=False)
        self.do_update_step(checkpoint.get("epoch", 0), checkpoint.get("global_step", 0), on_load_weights=True)
        self._loaded_weights = weights
        info(f"Loaded {checkpoint_fit.describe_loaded(state)} from system.weights='{weights}'"
             + (f" (ignored: {', '.join(ignore)})" if ignore else ""))

    def _say_if_untrained(self, mode: str) -> None:
        """--validate/--test/--export without resume= or system.weights= evaluate the Gaussians as
        initialised: say so on the console (not after a training in the same process)."""
        if self.resumed or getattr(self, "_loaded_weights", None) or self.cfg.geometry_convert_from:
            return
        if self._trainer is None or self.trainer.global_step > 0 or self.trainer.state.fn == "fit":
            return
        geometry = getattr(self.geometry, "cfg", None)
        init = getattr(geometry, "init_type", None)
        if init == "ply":
            init = f"ply, '{geometry.init_ply_path}'"
        warn(f"{mode} without resume= or system.weights=: this evaluates the untrained initial Gaussians"
             f"{f' (system.geometry.init_type={init})' if init else ''}, not a trained run; to evaluate one, add "
             "resume=<trial>/ckpts/last.ckpt (e.g. outputs/<name>/<tag>@<timestamp>/ckpts/last.ckpt).")

    def on_validation_start(self) -> None:
        self._say_if_untrained("--validate")
        super().on_validation_start()

    def on_test_start(self) -> None:
        self._say_if_untrained("--test")
        super().on_test_start()

    def on_predict_start(self) -> None:
        self._say_if_untrained("--export")
        super().on_predict_start()

    # ---- evaluation ----
    def _view_grid(self, out: Dict[str, Any]):
        return [
            {"type": "rgb", "img": out["comp_rgb"][0], "kwargs": {"data_format": "HWC"}},
            {"type": "grayscale", "img": out["comp_depth"][0, :, :, 0], "kwargs": {"cmap": None, "data_range": None}},
            {"type": "grayscale", "img": out["comp_mask"][0, :, :, 0], "kwargs": {"cmap": None, "data_range": (0, 1)}},
        ]

    def validation_step(self, batch, batch_idx):
        out = self.renderer(**batch)
        self.save_image_grid(
            f"it{self.true_global_step}-{batch['index'][0]}.png",
            self._view_grid(out),
            name="validation_step",
            step=self.true_global_step,
        )

    def test_step(self, batch, batch_idx):
        out = self.renderer(**batch)
        self.save_image_grid(
            f"it{self.true_global_step}-test/{batch['index'][0]}.png",
            self._view_grid(out)[:2],
            name="test_step",
            step=self.true_global_step,
        )

    def on_test_epoch_end(self):
        self.save_img_sequence(
            f"it{self.true_global_step}-test",
            f"it{self.true_global_step}-test",
            r"(\d+)\.png",
            save_format="mp4",
            fps=30,
            name="test",
            step=self.true_global_step,
        )
        path = self.get_save_path(self.cfg.ply_name)
        self.geometry.save_ply(path)
        info(f"Saved {self.geometry.num_points} Gaussians to {path}")
        if self.evaluator is not None:
            self.evaluator.evaluate(self)

    # ---- files: written atomically (atomic_files.py) ----
    def configure_callbacks(self):
        # the live splats writer when system.live_ply_every_n_steps > 0 (once: fit, then test, reuse the trainer)
        return [c for c in self._live_splats if c not in self.trainer.callbacks]

    def setup(self, stage: str) -> None:
        """Checkpoints are written atomically (``checkpoint_io.py``): installed here because
        threestudio's launch.py builds the Trainer itself, without plugins."""
        super().setup(stage)
        use_atomic_checkpoints(self.trainer)

    def save_image_grid(self, filename, imgs, *args, **kwargs):
        """The host's SaverMixin writes atomically; threestudio's writes in place (OpenCV): there the
        grid goes to a hidden temporary through it and is renamed once it decodes."""
        if getattr(self, "SAVER_WRITES_ATOMICALLY", False):
            return super().save_image_grid(filename, imgs, *args, **kwargs)
        path = self.get_save_path(filename)
        with temporary_path(path, verify=check_image_decodes) as tmp:
            super().save_image_grid(os.path.relpath(tmp, self.get_save_dir()), imgs, *args, **kwargs)
        return path

    def save_img_sequence(self, filename, img_dir, matcher, save_format="mp4", fps=30, name=None, step=None):
        """As :meth:`save_image_grid`: atomic under threestudio too (its video goes to a temporary)."""
        if getattr(self, "SAVER_WRITES_ATOMICALLY", False):
            return super().save_img_sequence(filename, img_dir, matcher, save_format, fps, name, step)
        if not filename.endswith(save_format):
            filename += f".{save_format}"
        path = self.get_save_path(filename)
        with temporary_path(path, verify=check_complete_mp4 if save_format == "mp4" else check_image_decodes) as tmp:
            super().save_img_sequence(os.path.relpath(tmp, self.get_save_dir()), img_dir, matcher, save_format,
                                      fps, name, step)
        return path

    def save_trimesh(self, filename: str, mesh, formats: List[str]) -> List[str]:
        """Write a ``trimesh.Trimesh`` as ``<filename>.<format>`` for each format (obj, ply, glb);
        the export type of ``lucid-gaussian-mesh-exporter``. Each file is made in memory and written
        atomically; an OBJ's material and texture go first, so a complete OBJ finds them."""
        paths = []
        for fmt in formats:
            path = self.get_save_path(f"{filename}.{fmt}")
            if fmt == "obj":
                # vertex colours on the v lines; a baked texture as the .mtl and its image beside it
                from trimesh.exchange.obj import export_obj

                text, assets = export_obj(mesh, include_color=True, include_texture=True, return_texture=True,
                                          write_texture=False, mtl_name=f"{os.path.basename(filename)}.mtl")
                for name, data in assets.items():
                    write_bytes(os.path.join(os.path.dirname(path), name), data)
                write_text(path, text)
            elif fmt == "ply" and "vertex_colors" in mesh.metadata:
                # PLY holds no texture: the baked mesh's vertex colours instead
                import trimesh

                colored = mesh.copy()
                colored.visual = trimesh.visual.ColorVisuals(colored, vertex_colors=mesh.metadata["vertex_colors"])
                write_bytes(path, colored.export(file_type="ply"))
            else:
                data = mesh.export(file_type=fmt)
                write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)
            paths.append(path)
        info(f"Saved the mesh to {', '.join(paths)}")
        return paths

    def on_predict_epoch_end(self) -> None:
        super().on_predict_epoch_end()
        self.geometry.save_ply(self.get_save_path(f"it{self.true_global_step}-export/{self.cfg.ply_name}"))
