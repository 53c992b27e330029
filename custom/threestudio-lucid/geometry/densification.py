"""Adaptive density control for Gaussian splats (3DGS section 5, with LucidDreamer's settings).

A unit of its own, as gsplat's strategies are: it never renders and does not own the parameters. It
works on a dict of named parameters (``xyz, f_dc, f_rest, opacity, scaling, rotation`` holding the raw
3DGS values: log-scales, opacity logits, wxyz quaternions) and on the Adam optimizer whose param groups
carry the same names, and it returns the new parameters for the owner to store.

Every change of the point count keeps the optimizer consistent: the moments (``exp_avg``, ``exp_avg_sq``)
of surviving points are kept bit for bit, rows of removed points are dropped, new points start with zero
moments, and the new tensors replace the old ones as fresh ``nn.Parameter`` objects inside their groups.

Statistics (:class:`DensificationStats`): the screen-space gradient norm ``||dL/d(x,y)||`` summed over the
views in which a point was visible, the number of such views, and the largest 2D radius seen.

Densify (every ``densification_interval`` steps inside the densify window), with g = mean gradient and
s = largest world scale of a Gaussian, T = ``split_thresh`` or ``percent_dense * scene_extent``:
- clone g >= ``densify_grad_threshold`` and s <= T: an exact copy;
- split g >= threshold and s > T: two children drawn from the Gaussian N(mu, R diag(scale^2) R^T) with
  scales divided by 0.8 * 2 = 1.6; the parent is removed.
Growth stops at ``max_num`` Gaussians: when the candidates would exceed it, those with the largest
gradients are kept.
Prune (every ``prune_interval`` steps inside the prune window): opacity < ``min_opac_prune``; with
``prune_big_points`` after ``prune_big_points_from_iter`` also max 2D radius > ``max_screen_size`` px and
s > ``max_world_size * scene_extent``.
Opacity reset: opacity <- min(opacity, ``opacity_reset_value``), moments of the opacity group zeroed.

Where this differs from the originals, and why:
- The 2D-radius prune works. 3DGS (and so LucidDreamer) zero ``max_radii2D`` when appending new points,
  i.e. before the prune that reads it, so their ``max_screen_size`` test never fires. Here new points copy
  their source's radius and the test uses the radii of the ended interval (as gsplat does). Set
  ``max_screen_size: 0`` to reproduce the originals' effective behaviour.
- Clone vs split compares the largest scale (3DGS / LucidDreamer), not the norm of the scale vector
  (threestudio-3dgs).
- ``max_num`` limits growth up front (largest gradients first) instead of letting N overshoot and then
  pruning at random (threestudio-3dgs); a cloud already above ``max_num`` (a loaded PLY) is still cut at
  random.
"""
from types import SimpleNamespace

import torch
import torch.nn as nn

GAUSSIAN_PARAM_NAMES = ("xyz", "f_dc", "f_rest", "opacity", "scaling", "rotation")

# split children have their scale divided by 0.8 * N (3DGS: "divide by 0.8N", N = 2 samples)
SPLIT_SAMPLES = 2
SPLIT_SCALE_DIVISOR = 0.8 * SPLIT_SAMPLES


# ----------------------------------------------------------------------------------------------------
# Parameter surgery that keeps Adam's state aligned with the points
# ----------------------------------------------------------------------------------------------------
def _named_group(optimizer, name):
    for group in optimizer.param_groups:
        if group.get("name") == name:
            return group
    return None


def _swap(optimizer, name: str, old: torch.Tensor, new_value: torch.Tensor, edit_state) -> nn.Parameter:
    """Put ``new_value`` as a new Parameter into group ``name``; ``edit_state(tensor) -> tensor`` maps each
    per-point state tensor (first dim = number of points) to the new layout, or the state is dropped when
    ``edit_state`` is None."""
    data = new_value.detach()
    new_param = nn.Parameter(data.clone() if data.data_ptr() == old.data_ptr() else data, requires_grad=True)
    if optimizer is None:
        return new_param
    group = _named_group(optimizer, name)
    if group is None:
        return new_param
    old_param = group["params"][0]
    state = optimizer.state.pop(old_param, None)
    group["params"][0] = new_param
    if state is not None and edit_state is not None:
        n_old = old_param.shape[0]
        new_state = {}
        for key, value in state.items():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == n_old:
                new_state[key] = edit_state(value)
            else:
                new_state[key] = value  # e.g. Adam's scalar ``step``
        optimizer.state[new_param] = new_state
    return new_param


def select_points(params: dict, optimizer, keep: torch.Tensor) -> dict:
    """Keep the rows where ``keep`` (bool [N]) is True, in every parameter and its Adam state."""
    keep = keep.to(next(iter(params.values())).device)
    out = {}
    for name, p in params.items():
        out[name] = _swap(optimizer, name, p, p.detach()[keep], lambda s: s[keep])
    return out


def append_points(params: dict, optimizer, new: dict) -> dict:
    """Append rows ``new[name]`` to every parameter; their Adam moments start at zero."""
    out = {}
    for name, p in params.items():
        extra = new[name].detach().to(p.device, p.dtype)

        def grow(s, extra=extra):
            return torch.cat([s, torch.zeros((extra.shape[0],) + s.shape[1:], dtype=s.dtype, device=s.device)])

        out[name] = _swap(optimizer, name, p, torch.cat([p.detach(), extra], dim=0), grow)
    return out


def replace_parameter(params: dict, optimizer, name: str, value: torch.Tensor, keep_state: bool = False) -> dict:
    """Replace one parameter's values (same shape); its moments are zeroed unless ``keep_state``."""
    out = dict(params)
    out[name] = _swap(optimizer, name, params[name], value, (lambda s: s) if keep_state else torch.zeros_like)
    return out


def rebind_parameters(params: dict, optimizer) -> None:
    """Make the optimizer's named groups hold exactly ``params`` (after a load); state of rebound params is dropped."""
    if optimizer is None:
        return
    for name, p in params.items():
        group = _named_group(optimizer, name)
        if group is not None and group["params"][0] is not p:
            optimizer.state.pop(group["params"][0], None)
            group["params"][0] = p


# ----------------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------------
class DensificationStats:
    """Per-point sums of screen-space gradient norms, visible-view counts and max 2D radii."""

    def __init__(self, num_points: int = 0, device="cpu"):
        self.reset(num_points, device)

    def reset(self, num_points: int, device=None) -> None:
        device = device if device is not None else self.grad_accum.device
        self.grad_accum = torch.zeros(num_points, device=device)
        self.denom = torch.zeros(num_points, device=device)
        self.max_radii2D = torch.zeros(num_points, device=device)

    @property
    def num_points(self) -> int:
        return self.grad_accum.shape[0]

    def to(self, device) -> "DensificationStats":
        self.grad_accum, self.denom, self.max_radii2D = (
            t.to(device) for t in (self.grad_accum, self.denom, self.max_radii2D))
        return self

    @torch.no_grad()
    def add(self, viewspace_grad, visibility, radii=None) -> None:
        """Accumulate one view: ``viewspace_grad`` [N, 2 or 3] (only x, y are used; None = radii only),
        ``visibility`` [N] bool, ``radii`` [N] in pixels."""
        vis = visibility.reshape(-1).to(self.grad_accum.device).bool()
        if vis.shape[0] != self.num_points:
            raise ValueError(f"densification stats track {self.num_points} points but got a visibility mask "
                             f"of {vis.shape[0]}: call update_states before changing the point count")
        # masks, not boolean indexing: the same values without a nonzero() (a host-device sync on a GPU)
        if radii is not None:
            r = radii.reshape(-1).to(self.max_radii2D.device, self.max_radii2D.dtype)
            self.max_radii2D = torch.where(vis, torch.maximum(self.max_radii2D, r), self.max_radii2D)
        if viewspace_grad is not None:
            g = viewspace_grad.reshape(self.num_points, -1)[:, :2].to(self.grad_accum.device, self.grad_accum.dtype)
            self.grad_accum += torch.where(vis, g.norm(dim=-1), torch.zeros((), dtype=g.dtype, device=g.device))
            self.denom += vis.to(self.denom.dtype)

    def mean_grad(self) -> torch.Tensor:
        # never-seen points (denom 0) have no gradient; NaN cannot get here (the system's numerical guard)
        return torch.where(self.denom > 0, self.grad_accum / self.denom.clamp_min(1.0), torch.zeros_like(self.grad_accum))

    def select(self, keep: torch.Tensor) -> None:
        keep = keep.to(self.grad_accum.device)
        self.grad_accum, self.denom, self.max_radii2D = self.grad_accum[keep], self.denom[keep], self.max_radii2D[keep]

    def append_from(self, source_index: torch.Tensor) -> None:
        """Add rows for new points: zero gradient statistics, max radius copied from ``source_index``."""
        k = source_index.shape[0]
        zeros = torch.zeros(k, device=self.grad_accum.device)
        self.grad_accum = torch.cat([self.grad_accum, zeros])
        self.denom = torch.cat([self.denom, zeros])
        self.max_radii2D = torch.cat([self.max_radii2D, self.max_radii2D[source_index.to(zeros.device)]])


# ----------------------------------------------------------------------------------------------------
# The strategy
# ----------------------------------------------------------------------------------------------------
def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [N, 3, 3] of quaternions [N, 4] given as (w, x, y, z); normalised first."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)


def _logit(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p / (1 - p))


class GaussianDensifier:
    """Schedules and applies clone / split / prune / opacity reset.

    ``cfg`` is any object with the densification fields of the geometry's Config
    (``max_num, densification_interval, densify_from_iter, densify_until_iter, densify_grad_threshold,
    percent_dense, split_thresh, scene_extent, prune_interval, prune_from_iter, prune_until_iter,
    min_opac_prune, prune_big_points, prune_big_points_from_iter, max_screen_size, max_world_size,
    opacity_reset_interval, opacity_reset_value``).
    Windows are open on both ends, as in 3DGS / threestudio-3dgs: ``from < step < until``.
    """

    SCHEDULE = ("densify_from_iter", "densify_until_iter", "densification_interval", "prune_from_iter",
                "prune_until_iter", "prune_interval", "opacity_reset_interval", "max_num")

    def __init__(self, cfg, num_points: int = 0, device="cpu"):
        self.cfg = cfg
        # the values every step reads, read once (an OmegaConf attribute costs ~10 us; a step read 13)
        self.schedule = SimpleNamespace(**{key: getattr(cfg, key, None) for key in self.SCHEDULE})
        self.stats = DensificationStats(num_points, device)

    # ---- schedule
    def _in_window(self, step, start, until, interval) -> bool:
        return interval > 0 and start < step < until and step % interval == 0

    def should_densify(self, step: int) -> bool:
        c = self.schedule
        return self._in_window(step, c.densify_from_iter, c.densify_until_iter, c.densification_interval)

    def should_prune(self, step: int) -> bool:
        c = self.schedule
        return self._in_window(step, c.prune_from_iter, c.prune_until_iter, c.prune_interval)

    def should_reset_opacity(self, step: int) -> bool:
        c = self.schedule
        return self._in_window(step, 0, c.densify_until_iter, c.opacity_reset_interval)

    def tracks_stats(self, step: int) -> bool:
        return step < max(self.schedule.densify_until_iter, self.schedule.prune_until_iter)

    @property
    def split_threshold(self) -> float:
        c = self.cfg
        return c.split_thresh if c.split_thresh is not None else c.percent_dense * c.scene_extent

    # ---- operations (each returns the new parameter dict)
    @torch.no_grad()
    def cap(self, params: dict, optimizer, generator=None):
        """Randomly drop points down to ``max_num`` (threestudio-3dgs' random prune). Returns (params, removed)."""
        n, max_num = params["xyz"].shape[0], self.schedule.max_num
        if n <= max_num:
            return params, 0
        order = torch.randperm(n, generator=generator)
        keep = torch.zeros(n, dtype=torch.bool)
        keep[order[:max_num]] = True
        self.stats.select(keep)
        return select_points(params, optimizer, keep), n - max_num

    @torch.no_grad()
    def densify(self, params: dict, optimizer, generator=None):
        """Clone small and split large Gaussians with a mean gradient >= the threshold.

        Returns ``(params, n_cloned, n_split)``; split parents are removed, so N grows by clones + splits.
        """
        n = params["xyz"].shape[0]
        self.stats.to(params["xyz"].device)
        grads = self.stats.mean_grad()
        max_scale = torch.exp(params["scaling"].detach()).max(dim=1).values
        high = grads >= self.cfg.densify_grad_threshold
        big = max_scale > self.split_threshold
        candidates = high.nonzero().squeeze(1)
        budget = max(self.cfg.max_num - n, 0)
        if candidates.numel() > budget:
            order = torch.sort(grads[candidates], descending=True, stable=True).indices
            chosen = torch.zeros(n, dtype=torch.bool, device=high.device)
            chosen[candidates[order[:budget]]] = True
            high = chosen
        clone = high & ~big
        split = high & big
        clone_idx = clone.nonzero().squeeze(1)
        split_idx = split.nonzero().squeeze(1)
        if clone_idx.numel() == 0 and split_idx.numel() == 0:
            return params, 0, 0

        raw = {k: v.detach() for k, v in params.items()}
        new = {k: [raw[k][clone_idx]] for k in raw}
        if split_idx.numel() > 0:
            scale = torch.exp(raw["scaling"][split_idx]).repeat(SPLIT_SAMPLES, 1)
            noise_device = generator.device if generator is not None else scale.device
            noise = torch.randn(scale.shape, generator=generator, dtype=scale.dtype, device=noise_device)
            samples = noise.to(scale.device) * scale  # N(0, diag(scale^2)) in the Gaussian's frame
            rot = quaternion_to_matrix(raw["rotation"][split_idx]).repeat(SPLIT_SAMPLES, 1, 1)
            centers = raw["xyz"][split_idx].repeat(SPLIT_SAMPLES, 1)
            new["xyz"].append(torch.bmm(rot, samples[..., None])[..., 0] + centers)
            new["scaling"].append(torch.log(scale / SPLIT_SCALE_DIVISOR))
            for k in ("f_dc", "f_rest", "opacity", "rotation"):
                reps = (SPLIT_SAMPLES,) + (1,) * (raw[k].dim() - 1)
                new[k].append(raw[k][split_idx].repeat(*reps))
        new = {k: torch.cat(v, dim=0) for k, v in new.items()}

        params = append_points(params, optimizer, new)
        self.stats.append_from(torch.cat([clone_idx, split_idx.repeat(SPLIT_SAMPLES)]))
        keep = torch.ones(params["xyz"].shape[0], dtype=torch.bool, device=split.device)
        keep[split_idx] = False
        self.stats.select(keep)
        params = select_points(params, optimizer, keep)
        return params, int(clone_idx.numel()), int(split_idx.numel())

    @torch.no_grad()
    def prune_mask(self, params: dict, step: int) -> torch.Tensor:
        c = self.cfg
        opacity = torch.sigmoid(params["opacity"].detach()).reshape(-1)
        mask = opacity < c.min_opac_prune
        if c.prune_big_points and step > c.prune_big_points_from_iter:
            if c.max_screen_size and c.max_screen_size > 0:
                mask |= self.stats.max_radii2D.to(mask.device) > c.max_screen_size
            if c.max_world_size and c.max_world_size > 0:
                max_scale = torch.exp(params["scaling"].detach()).max(dim=1).values
                mask |= max_scale > c.max_world_size * c.scene_extent
        return mask

    @torch.no_grad()
    def prune(self, params: dict, optimizer, step: int):
        """Remove transparent (and, when enabled, oversized) Gaussians. Returns (params, removed).
        A prune that would remove every Gaussian is skipped."""
        mask = self.prune_mask(params, step)
        removed = int(mask.sum())
        if removed == 0 or removed == mask.numel():
            return params, 0
        self.stats.select(~mask)
        return select_points(params, optimizer, ~mask), removed

    @torch.no_grad()
    def reset_opacity(self, params: dict, optimizer):
        """opacity <- min(opacity, opacity_reset_value) (LucidDreamer / 3DGS); the opacity moments restart at 0.
        Logits already below the value are left bit-identical."""
        raw = params["opacity"].detach()
        value = torch.as_tensor(self.cfg.opacity_reset_value, dtype=raw.dtype, device=raw.device)
        new = torch.where(torch.sigmoid(raw) > value, _logit(value).expand_as(raw), raw)
        return replace_parameter(params, optimizer, "opacity", new, keep_state=False)

    @torch.no_grad()
    def step(self, params: dict, optimizer, step: int, generator=None):
        """Run what the schedule asks for at ``step``: cap, densify, prune, opacity reset (in that order).

        Statistics are reset after a densification (as 3DGS does), kept (and sliced) otherwise.
        Returns ``(params, report)`` with the counts of each operation.
        """
        report = {"capped": 0, "cloned": 0, "split": 0, "pruned": 0, "opacity_reset": False}
        params, report["capped"] = self.cap(params, optimizer, generator)
        densified = self.should_densify(step)
        if densified:
            params, report["cloned"], report["split"] = self.densify(params, optimizer, generator)
        if self.should_prune(step):
            params, report["pruned"] = self.prune(params, optimizer, step)
        if self.should_reset_opacity(step):
            params = self.reset_opacity(params, optimizer)
            report["opacity_reset"] = True
        if densified:
            self.stats.reset(params["xyz"].shape[0], params["xyz"].device)
        return params, report
