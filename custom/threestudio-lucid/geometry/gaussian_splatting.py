"""3D Gaussian splat geometry: parameters, activations, initialisation, optimizer, densification hooks, PLY.

Follows threestudio-3dgs' ``gaussian-splatting`` geometry (same parameter and property names, the geometry
owns its Adam optimizer, ``update_states`` is called by the system after backward) with LucidDreamer's
recipe as defaults (SH degree 0, grey sphere init of opacity 0.1, log-linear learning rates over 5000 steps,
densify 100..3000 every 100 steps, opacity reset to min(o, 0.01) every 300 steps).

Parameters (raw, pre-activation, as in 3DGS):
``_xyz [N,3]``, ``_features_dc [N,1,3]`` (SH DC, rgb = 0.5 + C0 * dc with C0 = 0.28209479177387814),
``_features_rest [N,(d+1)^2-1,3]``, ``_scaling [N,3]`` (log), ``_rotation [N,4]`` (w,x,y,z), ``_opacity [N,1]``
(logit). Activations: ``get_scaling = exp``, ``get_rotation = q/|q|``, ``get_opacity = sigmoid``.
"""
import copy
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn as nn

from ..compat import C, BaseGeometry, register, warn
from ..errors import ConfigError
from .densification import GaussianDensifier, rebind_parameters
from .initializers import SHAPE_INITIALIZERS, nearest_neighbor_log_scales, point_e_points
from .ply_io import is_gaussian_ply, read_gaussian_ply, read_point_cloud_ply, write_gaussian_ply

SH_C0 = 0.28209479177387814

INIT_TYPES = ("ball", "sphere_shell", "sphere_solid", "box", "ply", "point_e")

# group name -> attribute holding the Parameter
PARAM_ATTRS = {
    "xyz": "_xyz",
    "f_dc": "_features_dc",
    "f_rest": "_features_rest",
    "opacity": "_opacity",
    "scaling": "_scaling",
    "rotation": "_rotation",
}
# the state_dict key torch gives get_extra_state() (densification statistics)
EXTRA_STATE_KEY = "_extra_state"

LR_FIELDS = ("position_lr", "feature_lr", "opacity_lr", "scaling_lr", "rotation_lr")


def rgb_to_sh_dc(rgb: torch.Tensor) -> torch.Tensor:
    """SH DC coefficient of a constant colour: (rgb - 0.5) / C0."""
    return (rgb - 0.5) / SH_C0


def sh_dc_to_rgb(dc: torch.Tensor) -> torch.Tensor:
    return dc * SH_C0 + 0.5


def inverse_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x / (1 - x))


@register("lucid-gaussian-splatting")
class GaussianSplatting(BaseGeometry):
    @dataclass
    class Config(BaseGeometry.Config):
        # capacity and appearance
        max_num: int = 500000  # densification never grows past this; larger clouds are randomly cut
        sh_degree: int = 0  # 0..3
        sh_degree_increase_interval: int = 0  # >0: active degree = min(sh_degree, step // interval); 0: max at once

        # learning rates: numbers or C() schedules, interpolated exponentially (log-linear)
        position_lr: Any = field(default_factory=lambda: [0, 0.00016, 0.0000016, 5000])
        position_lr_spatial_scale: Optional[float] = None  # multiplies position_lr; None = scene_extent (3DGS)
        feature_lr: Any = field(default_factory=lambda: [0, 0.005, 0.003, 5000])  # f_rest uses feature_lr / 20
        opacity_lr: Any = 0.05
        scaling_lr: Any = field(default_factory=lambda: [0, 0.005, 0.001, 5000])
        rotation_lr: Any = field(default_factory=lambda: [0, 0.001, 0.0002, 5000])

        # densification (see densification.py); windows are open: from < step < until
        scene_extent: float = 3.5
        densification_interval: int = 100
        densify_from_iter: int = 100
        densify_until_iter: int = 3000
        densify_grad_threshold: float = 0.00075
        percent_dense: float = 0.003  # clone if max scale <= percent_dense * scene_extent, else split
        split_thresh: Optional[float] = None  # world units; overrides percent_dense * scene_extent when set
        prune_interval: int = 100
        prune_from_iter: int = 100
        prune_until_iter: int = 3000
        min_opac_prune: float = 0.005
        prune_big_points: bool = True
        prune_big_points_from_iter: int = 300  # LucidDreamer: after the first opacity reset
        max_screen_size: float = 20.0  # max 2D radius in pixels; 0 disables
        max_world_size: float = 0.1  # max world scale as a fraction of scene_extent; 0 disables
        opacity_reset_interval: int = 300  # 0 disables
        opacity_reset_value: float = 0.01

        # initialisation
        init_type: str = "sphere_solid"  # ball | sphere_shell | sphere_solid | box | ply | point_e
        init_num_pts: int = 100000
        init_radius: float = 0.5
        init_ply_path: Optional[str] = None  # for init_type ply: a 3DGS PLY, or a point cloud (x,y,z[,red,green,blue])
        init_prompt: str = ""  # for init_type point_e
        init_point_e_jitter: float = 0.05  # radius of the ball each Point-E point is spread in
        init_color: Any = 0.5  # grey; a number or [r, g, b] in [0, 1]
        init_random_colors: bool = False  # uniform random colours instead of init_color
        init_use_source_colors: bool = False  # keep the colours of a point-cloud PLY / Point-E sample
        init_opacity: float = 0.1

    cfg: Config

    # ------------------------------------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------------------------------------
    def configure(self) -> None:
        super().configure()
        self._validate_config()
        self.active_sh_degree = self._sh_degree_at(0)
        self._last_states_step = None
        self.densifier = GaussianDensifier(self.cfg)
        self.optimizer = None
        self._initialize()
        self.setup_optimizer()
        self.update_learning_rate(0)
        self.register_load_state_dict_post_hook(GaussianSplatting._after_load_state_dict)

    def _validate_config(self) -> None:
        c = self.cfg
        if c.init_type not in INIT_TYPES:
            raise ConfigError(f"system.geometry.init_type='{c.init_type}' is unknown: use one of {', '.join(INIT_TYPES)}")
        if c.sh_degree not in (0, 1, 2, 3):
            raise ConfigError(f"system.geometry.sh_degree={c.sh_degree} must be 0, 1, 2 or 3")
        if c.sh_degree_increase_interval < 0:
            raise ConfigError(f"system.geometry.sh_degree_increase_interval={c.sh_degree_increase_interval} must be >= 0")
        if c.max_num < 1:
            raise ConfigError(f"system.geometry.max_num={c.max_num} must be >= 1")
        if c.init_type not in ("ply",) and (int(c.init_num_pts) != c.init_num_pts or c.init_num_pts < 1):
            raise ConfigError(f"system.geometry.init_num_pts={c.init_num_pts} must be a positive integer")
        if c.init_type not in ("ply",) and c.init_num_pts > c.max_num:
            raise ConfigError(f"system.geometry.init_num_pts={c.init_num_pts} exceeds system.geometry.max_num={c.max_num}: "
                              "lower init_num_pts or raise max_num")
        if not c.init_radius > 0:
            raise ConfigError(f"system.geometry.init_radius={c.init_radius} must be > 0")
        if not 0 < c.init_opacity < 1:
            raise ConfigError(f"system.geometry.init_opacity={c.init_opacity} must be in (0, 1)")
        if not 0 < c.opacity_reset_value < 1:
            raise ConfigError(f"system.geometry.opacity_reset_value={c.opacity_reset_value} must be in (0, 1)")
        if not c.scene_extent > 0:
            raise ConfigError(f"system.geometry.scene_extent={c.scene_extent} must be > 0")
        if c.split_thresh is None and not c.percent_dense > 0:
            raise ConfigError(f"system.geometry.percent_dense={c.percent_dense} must be > 0 (or set split_thresh)")
        if c.split_thresh is not None and not float(c.split_thresh) > 0:
            raise ConfigError(f"system.geometry.split_thresh={c.split_thresh} must be > 0 (or null to use percent_dense)")
        self._init_rgb()  # validates init_color
        probe_steps = {0, 10 ** 9}
        for name in LR_FIELDS:
            value = getattr(c, name)
            if not isinstance(value, (int, float)):
                try:
                    probe_steps.update(int(v) for v in value if isinstance(v, int))
                except TypeError:
                    raise ConfigError(f"system.geometry.{name}={value} must be a number or a C() schedule list") from None
        for name in LR_FIELDS:
            for step in sorted(probe_steps):
                try:
                    lr = C(getattr(c, name), 0, step, interpolation="exp")
                except (ValueError, TypeError, ZeroDivisionError) as e:
                    raise ConfigError(
                        f"system.geometry.{name}={getattr(c, name)} is not a valid exponential schedule ({e}): "
                        "use positive values, e.g. [0, 1e-3, 1e-5, 5000]"
                    ) from None
                if lr < 0:
                    raise ConfigError(f"system.geometry.{name}={getattr(c, name)} gives a negative learning rate")

    def _init_rgb(self) -> torch.Tensor:
        color = self.cfg.init_color
        try:
            rgb = torch.as_tensor(list(color) if not isinstance(color, (int, float)) else [color] * 3,
                                  dtype=torch.float32)
        except (TypeError, ValueError):
            rgb = None
        if rgb is None or rgb.shape != (3,) or not bool(((rgb >= 0) & (rgb <= 1)).all()):
            raise ConfigError(f"system.geometry.init_color={color} must be a number or [r, g, b] with values in [0, 1]")
        return rgb

    def _initialize(self) -> None:
        c = self.cfg
        colors = None
        if c.init_type == "ply":
            if not c.init_ply_path:
                raise ConfigError("system.geometry.init_type='ply' needs system.geometry.init_ply_path: set it to a .ply file")
            if is_gaussian_ply(c.init_ply_path):
                self.load_ply(c.init_ply_path)
                return
            points, colors = read_point_cloud_ply(c.init_ply_path)
        elif c.init_type == "point_e":
            points, colors = point_e_points(c.init_prompt, c.init_num_pts, c.init_point_e_jitter,
                                            device=str(self.device))
        else:
            points, colors = SHAPE_INITIALIZERS[c.init_type](c.init_num_pts, c.init_radius)
        self.create_from_points(points, colors)

    def create_from_points(self, points: torch.Tensor, colors=None) -> None:
        """Gaussians at ``points`` [N,3]: isotropic scales from the 3 nearest neighbours, identity rotations,
        opacity ``init_opacity``, colour from ``init_random_colors`` / ``init_use_source_colors`` / ``init_color``.
        """
        c = self.cfg
        points = torch.as_tensor(points, dtype=torch.float32).reshape(-1, 3).cpu()
        n = points.shape[0]
        if c.init_random_colors:
            rgb = torch.rand(n, 3)
        elif c.init_use_source_colors and colors is not None:
            rgb = torch.as_tensor(colors, dtype=torch.float32).reshape(n, 3).clamp(0, 1)
        else:
            rgb = self._init_rgb().expand(n, 3)
        k_rest = (c.sh_degree + 1) ** 2 - 1
        rotation = torch.zeros(n, 4)
        rotation[:, 0] = 1.0
        self.set_gaussians(
            {
                "xyz": points,
                "f_dc": rgb_to_sh_dc(rgb).reshape(n, 1, 3),
                "f_rest": torch.zeros(n, k_rest, 3),
                "opacity": inverse_sigmoid(torch.full((n, 1), float(c.init_opacity))),
                "scaling": nearest_neighbor_log_scales(points),
                "rotation": rotation,
            }
        )

    def set_gaussians(self, tensors: dict) -> None:
        """Replace every parameter by new raw values (any N), keyed by group name
        (``xyz [N,3], f_dc [N,1,3], f_rest [N,K-1,3], opacity [N,1], scaling [N,3], rotation [N,4]``).
        The optimizer keeps its groups; the moments of the replaced parameters restart at zero."""
        device = self._xyz.device if "_xyz" in self._parameters else self.device
        values = {name: torch.as_tensor(tensors[name]).detach().to(device, torch.float32).clone()
                  for name in PARAM_ATTRS}
        n = values["xyz"].shape[0]
        k_rest = (self.cfg.sh_degree + 1) ** 2 - 1
        expected = {"xyz": (n, 3), "f_dc": (n, 1, 3), "f_rest": (n, k_rest, 3), "opacity": (n, 1),
                    "scaling": (n, 3), "rotation": (n, 4)}
        for name, shape in expected.items():
            if tuple(values[name].shape) != shape:
                raise ValueError(f"set_gaussians: '{name}' has shape {tuple(values[name].shape)}, expected {shape}")
        for name, attr in PARAM_ATTRS.items():
            setattr(self, attr, nn.Parameter(values[name], requires_grad=True))
        rebind_parameters(self.gaussian_parameters(), self.optimizer)
        self.densifier.stats.reset(n, device)

    # ------------------------------------------------------------------------------------------------
    # parameters and activations
    # ------------------------------------------------------------------------------------------------
    def gaussian_parameters(self) -> dict:
        """The six parameters keyed by optimizer group name (``xyz, f_dc, f_rest, opacity, scaling, rotation``)."""
        return {name: getattr(self, attr) for name, attr in PARAM_ATTRS.items()}

    def _store(self, params: dict) -> None:
        for name, attr in PARAM_ATTRS.items():
            setattr(self, attr, params[name])

    @property
    def num_points(self) -> int:
        return self._xyz.shape[0]

    @property
    def max_sh_degree(self) -> int:
        return self.cfg.sh_degree

    @property
    def get_xyz(self) -> torch.Tensor:
        return self._xyz

    @property
    def get_features(self) -> torch.Tensor:
        """SH coefficients [N, (d+1)^2, 3]: DC first, then the rest."""
        return torch.cat([self._features_dc, self._features_rest], dim=1)

    @property
    def get_scaling(self) -> torch.Tensor:
        return torch.exp(self._scaling)

    @property
    def get_rotation(self) -> torch.Tensor:
        return torch.nn.functional.normalize(self._rotation, dim=-1)

    @property
    def get_opacity(self) -> torch.Tensor:
        return torch.sigmoid(self._opacity)

    # ------------------------------------------------------------------------------------------------
    # optimisation
    # ------------------------------------------------------------------------------------------------
    def setup_optimizer(self) -> torch.optim.Optimizer:
        """Adam over the six named groups (eps 1e-15, as 3DGS); the learning rates come from update_learning_rate.
        torch's fused Adam (one kernel per tensor; 7x faster than the single-tensor loop at 100k Gaussians
        on the CPU) where this torch has it for the parameters' device, else the multi-tensor one."""
        groups = [{"params": [p], "lr": 0.0, "name": name} for name, p in self.gaussian_parameters().items()]
        try:
            self.optimizer = torch.optim.Adam(groups, lr=0.0, eps=1e-15, fused=True)
        except (RuntimeError, TypeError, ValueError):  # torch < 2.4 has no fused Adam on the CPU
            self.optimizer = torch.optim.Adam(groups, lr=0.0, eps=1e-15, foreach=True)
        return self.optimizer

    def learning_rates(self, global_step: int, epoch: int = 0) -> dict:
        """Learning rate of each group at ``global_step`` (exp-interpolated C() values)."""
        specs = self.__dict__.get("_lr_specs")
        if specs is None:  # read the config once: its attribute access costs every step. The schedules stay
            # config lists: threestudio's C() accepts nothing else (it converts them itself)
            c = self.cfg
            spatial = c.position_lr_spatial_scale if c.position_lr_spatial_scale is not None else c.scene_extent
            specs = {"position": c.position_lr, "feature": c.feature_lr, "opacity": c.opacity_lr,
                     "scaling": c.scaling_lr, "rotation": c.rotation_lr, "spatial": float(spatial)}
            self.__dict__["_lr_specs"] = specs

        def lr(value):
            return float(C(value, epoch, global_step, interpolation="exp"))

        feature = lr(specs["feature"])
        return {
            "xyz": lr(specs["position"]) * specs["spatial"],
            "f_dc": feature,
            "f_rest": feature / 20.0,
            "opacity": lr(specs["opacity"]),
            "scaling": lr(specs["scaling"]),
            "rotation": lr(specs["rotation"]),
        }

    def update_learning_rate(self, global_step: int, epoch: int = 0) -> None:
        key = (global_step, epoch, id(self.optimizer))
        if self.__dict__.get("_lr_set_for") == key:
            return  # threestudio reaches the geometry twice a step; the rates are already set
        rates = self.learning_rates(global_step, epoch)
        for group in self.optimizer.param_groups:
            if group.get("name") in rates:
                group["lr"] = rates[group["name"]]
        self.__dict__["_lr_set_for"] = key

    def _sh_degree_at(self, global_step: int) -> int:
        interval = self.cfg.sh_degree_increase_interval
        if interval <= 0:
            return self.cfg.sh_degree
        return min(self.cfg.sh_degree, global_step // interval)

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        # idempotent: threestudio reaches the geometry through system.geometry and system.renderer.geometry
        self.active_sh_degree = self._sh_degree_at(global_step)
        self.update_learning_rate(global_step, epoch)

    # ------------------------------------------------------------------------------------------------
    # densification
    # ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def add_densification_stats(self, viewspace_point_grad, visibility, radii=None) -> None:
        """Accumulate one view's screen-space gradient [N,2|3], visibility [N] bool and radii [N]."""
        self.densifier.stats.to(self._xyz.device)
        if self.densifier.stats.num_points != self.num_points:
            self.densifier.stats.reset(self.num_points, self._xyz.device)
        self.densifier.stats.add(viewspace_point_grad, visibility, radii)

    @torch.no_grad()
    def densify_and_prune(self, global_step: int) -> dict:
        """Run the scheduled cap / densify / prune / opacity reset for ``global_step`` (see densification.py)."""
        params, report = self.densifier.step(self.gaussian_parameters(), self.optimizer, global_step)
        self._store(params)
        return report

    @torch.no_grad()
    def reset_opacity(self) -> None:
        self._store(self.densifier.reset_opacity(self.gaussian_parameters(), self.optimizer))

    @torch.no_grad()
    def update_states(self, global_step: int, visibility_filter, radii, viewspace_points) -> dict:
        """threestudio-3dgs' hook, called by the system after ``backward``: one entry per rendered view.

        ``viewspace_points[i].grad`` holds view i's screen-space gradient. Statistics are accumulated while a
        densify or prune window is open; the scheduled operations run at most once per ``global_step``.
        """
        if not (len(visibility_filter) == len(radii) == len(viewspace_points)):
            raise ValueError("update_states needs one visibility_filter, radii and viewspace_points entry per view")
        if self.densifier.tracks_stats(global_step):
            for vis, rad, vp in zip(visibility_filter, radii, viewspace_points):
                grad = vp.grad if isinstance(vp, torch.Tensor) else None
                self.add_densification_stats(grad, vis, rad)
        if self._last_states_step == global_step:
            return {}
        self._last_states_step = global_step
        return self.densify_and_prune(global_step)

    # ------------------------------------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A checkpoint saved after densification holds a different N: resize before the default copy.
        for name, attr in PARAM_ATTRS.items():
            key = prefix + attr
            if key not in state_dict:
                continue
            src, cur = state_dict[key], getattr(self, attr)
            if tuple(src.shape) == tuple(cur.shape):
                continue
            if tuple(src.shape[1:]) != tuple(cur.shape[1:]):
                raise ConfigError(
                    f"checkpoint tensor '{key}' has shape {tuple(src.shape)} but this geometry expects "
                    f"[N, {', '.join(map(str, cur.shape[1:]))}]: set system.geometry.sh_degree to the checkpoint's degree"
                )
            setattr(self, attr, nn.Parameter(torch.empty(src.shape, dtype=cur.dtype, device=cur.device)))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if prefix + EXTRA_STATE_KEY in missing_keys:  # a checkpoint from before the statistics were saved
            missing_keys.remove(prefix + EXTRA_STATE_KEY)
            self._loaded_extra_state = False

    # The densification statistics and the step they were last updated at belong to the run: a resumed
    # run must densify exactly as the run it continues (torch saves this as `<prefix>_extra_state`).
    def get_extra_state(self) -> dict:
        stats = self.densifier.stats
        return {
            "densification_stats": {
                "grad_accum": stats.grad_accum.detach().cpu(),
                "denom": stats.denom.detach().cpu(),
                "max_radii2D": stats.max_radii2D.detach().cpu(),
            },
            "last_states_step": self._last_states_step,
        }

    def set_extra_state(self, state: dict) -> None:
        stats = self.densifier.stats
        saved = state.get("densification_stats", {})
        device = self._xyz.device
        if all(k in saved for k in ("grad_accum", "denom", "max_radii2D")):
            stats.grad_accum, stats.denom, stats.max_radii2D = (
                saved[k].to(device) for k in ("grad_accum", "denom", "max_radii2D"))
        self._last_states_step = state.get("last_states_step")
        self._loaded_extra_state = True

    @staticmethod
    def _after_load_state_dict(module, incompatible_keys) -> None:
        """After a load the optimizer holds the (possibly new) parameters with fresh moments; restore the moments
        with ``load_optimizer_state_dict`` (Lightning restores ``optimizer_states`` after the model)."""
        params = module.gaussian_parameters()
        if module.optimizer is not None:
            rebind_parameters(params, module.optimizer)
            for p in params.values():
                module.optimizer.state.pop(p, None)
        if not module.__dict__.pop("_loaded_extra_state", False) or module.densifier.stats.num_points != module.num_points:
            module.densifier.stats.reset(module.num_points, module._xyz.device)
            module._last_states_step = None

    def optimizer_state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_optimizer_state_dict(self, state_dict: dict) -> None:
        """Load Adam's state saved with ``optimizer_state_dict`` (after the matching parameters were loaded)."""
        saved_groups = state_dict.get("param_groups", [])
        names = [g.get("name") for g in self.optimizer.param_groups]
        if [g.get("name") for g in saved_groups] != names:
            raise ConfigError(f"optimizer state has groups {[g.get('name') for g in saved_groups]}, expected {names}")
        for group, saved in zip(self.optimizer.param_groups, saved_groups):
            p = group["params"][0]
            st = state_dict["state"].get(saved["params"][0], {})
            avg = st.get("exp_avg")
            if avg is not None and tuple(avg.shape) != tuple(p.shape):
                raise ConfigError(
                    f"optimizer state for '{group['name']}' has shape {tuple(avg.shape)} but the parameter has "
                    f"{tuple(p.shape)}: load the geometry's state_dict from the same checkpoint first"
                )
        # a copy: torch would otherwise share the (same-device) moment tensors with the source optimizer
        self.optimizer.load_state_dict(copy.deepcopy(state_dict))
        self.__dict__.pop("_lr_set_for", None)  # the loaded groups carry their own rates: set them again

    def _apply(self, fn, *args, **kwargs):
        # .to()/.cuda()/.double(): keep the optimizer on the (possibly new) Parameter objects and move Adam's
        # per-point state and the densification statistics to their device (and dtype).
        before = self.gaussian_parameters() if "_xyz" in self._parameters else {}
        out = super()._apply(fn, *args, **kwargs)
        optimizer = self.__dict__.get("optimizer")
        if optimizer is not None:
            for name, old in before.items():
                new = getattr(self, PARAM_ATTRS[name])
                state = optimizer.state.pop(old, None)
                for group in optimizer.param_groups:
                    if group.get("name") == name:
                        group["params"][0] = new
                if state:
                    for k, v in state.items():
                        if torch.is_tensor(v) and v.dim() > 0:
                            state[k] = v.to(new.device, new.dtype if v.is_floating_point() else v.dtype)
                        elif torch.is_tensor(v) and optimizer.defaults.get("fused"):
                            state[k] = v.to(new.device)  # fused Adam keeps its step count on the device
                    optimizer.state[new] = state
        densifier = self.__dict__.get("densifier")
        if densifier is not None and "_xyz" in self._parameters:
            densifier.stats.to(self._xyz.device)
        return out

    # ------------------------------------------------------------------------------------------------
    # PLY and export
    # ------------------------------------------------------------------------------------------------
    def save_ply(self, path: str) -> str:
        """Write the Gaussians in the INRIA 3DGS PLY layout (raw values)."""
        return write_gaussian_ply(path, self._xyz, self._features_dc, self._features_rest, self._opacity,
                                  self._scaling, self._rotation)

    def load_ply(self, path: str) -> "GaussianSplatting":
        """Replace the Gaussians by those of a 3DGS PLY (any N). SH bands beyond ``sh_degree`` are dropped and
        missing ones are zero, with a warning; the optimizer's moments restart at zero."""
        data = read_gaussian_ply(path)
        k_rest = (self.cfg.sh_degree + 1) ** 2 - 1
        rest = torch.from_numpy(data["features_rest"])
        if rest.shape[1] != k_rest:
            warn(f"PLY '{path}' has SH degree {data['sh_degree']}, system.geometry.sh_degree is {self.cfg.sh_degree}: "
                 "extra bands are dropped, missing ones start at zero")
            fixed = torch.zeros(rest.shape[0], k_rest, 3)
            m = min(k_rest, rest.shape[1])
            fixed[:, :m] = rest[:, :m]
            rest = fixed
        n = data["xyz"].shape[0]
        if n > self.cfg.max_num:
            warn(f"PLY '{path}' holds {n} Gaussians, more than system.geometry.max_num={self.cfg.max_num}: "
                 "the next update_states keeps a random subset of max_num")
        self.set_gaussians(
            {
                "xyz": torch.from_numpy(data["xyz"]),
                "f_dc": torch.from_numpy(data["features_dc"]),
                "f_rest": rest,
                "opacity": torch.from_numpy(data["opacity"]),
                "scaling": torch.from_numpy(data["scaling"]),
                "rotation": torch.from_numpy(data["rotation"]),
            }
        )
        return self

    def export(self, *args, **kwargs) -> dict:
        return {}
