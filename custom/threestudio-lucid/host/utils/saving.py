"""``SaverMixin``: the writers a threestudio system uses for images, grids, videos, data and meshes.

Same method names, signatures, defaults and return values (the written path) as threestudio's
``utils/saving.py``; every path is relative to the save dir set by the launcher, and missing
sub-folders are created. threestudio writes through OpenCV, building BGR arrays for ``cv2.imwrite``;
here every intermediate array is RGB(A) and files are written with imageio, so what lands on disk is
what a viewer sees, and the ``get_*_image_`` helpers return RGB rather than BGR.

Where the output differs from threestudio, on purpose:
- ``cmap="jet"`` uses matplotlib's jet table (OpenCV's ``COLORMAP_JET`` differs by a few levels);
  ``cmap="magma"`` is written with its true colours (threestudio writes that RGB array unconverted
  through cv2, so its files have red and blue swapped).
- A constant map with ``data_range=None`` is written as zeros without a division by zero.
- MP4 frames of odd size are padded by one replicated row/column instead of being rescaled by
  imageio-ffmpeg to a multiple of 16; even sizes are kept exactly.
- Multi-channel ``uint16`` PNGs go through a small PNG encoder (Pillow cannot write them).
- ``save_obj`` needs no mesh library (it writes text); ``save_mesh`` needs trimesh, as threestudio.
- Every file is written atomically (``atomic_files.py``: a hidden temporary in the same folder, fsync,
  rename): a kill leaves the previous file or none, never a partial one, and a full disk raises one
  ``StorageError`` line. Images, data and meshes are encoded in memory first; an MP4 goes through
  ffmpeg into the temporary and must be complete (a ``moov`` box) before it is renamed: imageio-ffmpeg
  only logs ffmpeg's own failures, e.g. a full disk at the trailer.
"""
import functools
import io
import json
import os
import re
import struct
import zlib

import imageio
import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F

from ...atomic_files import check_complete_mp4, copy_file, temporary_path, write_bytes, write_text
from .. import warn
from .typing import Any, Dict, DictConfig, List, Optional, Tuple


# ---------------------------------------------------------------------------------------------
# colour tables
# ---------------------------------------------------------------------------------------------
GRAYSCALE_CMAPS = (None, "jet", "magma", "spectral")
UV_CMAPS = ("checkerboard", "color")


@functools.lru_cache(maxsize=None)
def _lut(name: str) -> np.ndarray:
    """A [256, 3] float table in [0, 1] for the matplotlib colour map ``name``."""
    from matplotlib import colormaps  # imported on first use: keeps the host import light

    return np.asarray(colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3], dtype=np.float64)


def _apply_jet(unit: np.ndarray) -> np.ndarray:
    # like cv2.applyColorMap: quantise to 8 bits first, then look the byte up in a 256-entry table
    table = np.round(_lut("jet") * 255.0).astype(np.uint8)
    return table[(unit * 255.0).astype(np.uint8)]


def _apply_magma(unit: np.ndarray) -> np.ndarray:
    # threestudio reverses magma (near = bright) and interpolates linearly between the 256 bins
    table = _lut("magma")
    pos = (1.0 - unit) * 255.0
    lo = np.floor(pos)
    frac = (pos - lo)[..., None]
    lo_i = lo.astype(np.int64).clip(0, 255)
    hi_i = (lo_i + 1).clip(max=255)
    rgb = table[lo_i] + (table[hi_i] - table[lo_i]) * frac
    return (rgb * 255.0).astype(np.uint8)


def _apply_spectral(unit: np.ndarray) -> np.ndarray:
    from matplotlib import colormaps

    rgba = colormaps["Spectral"](unit)
    alpha = rgba[..., 3:]
    rgb = rgba[..., :3] * alpha + (1.0 - alpha)  # composite over white (alpha is 1 for this map)
    return (rgb * 255.0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# pixel-level helpers
# ---------------------------------------------------------------------------------------------
def _resize_bilinear(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a uint8 [H, W, C] image with pixel-centre sampling (cv2.INTER_LINEAR)."""
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None]
    t = F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)
    return t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def _encode_png16(img: np.ndarray) -> bytes:
    """Encode a uint16 [H, W] or [H, W, C<=4] array as a 16-bit PNG (no filtering, zlib level 6)."""
    if img.ndim == 2:
        img = img[..., None]
    height, width, channels = img.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]  # grey, grey+alpha, RGB, RGBA
    samples = np.ascontiguousarray(img, dtype=">u2").view(np.uint8).reshape(height, width * channels * 2)
    scanlines = np.concatenate([np.zeros((height, 1), np.uint8), samples], axis=1)  # filter byte 0

    def chunk(tag: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(tag + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def _write_image(path: str, img: np.ndarray) -> None:
    """Write an RGB / RGBA / grey array (uint8, or uint16 for PNG) exactly as given."""
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    ext = os.path.splitext(path)[1].lower()
    if img.dtype == np.uint16:
        if ext != ".png":
            raise ValueError(f"uint16 images can only be saved as .png, got '{path}'")
        write_bytes(path, _encode_png16(img))
        return
    if ext in (".jpg", ".jpeg") and img.ndim == 3 and img.shape[-1] == 4:
        img = img[..., :3]  # JPEG has no alpha; cv2.imwrite drops it the same way
    write_bytes(path, iio.imwrite("<bytes>", np.ascontiguousarray(img), extension=ext))


def _read_frame_rgb(path: str) -> np.ndarray:
    """Read a frame as uint8 RGB, as ``cv2.imread`` + BGR->RGB does (alpha dropped, 16 bit -> 8)."""
    img = np.asarray(iio.imread(path))
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype == np.bool_:
        img = img.astype(np.uint8) * 255
    elif img.dtype != np.uint8:
        raise ValueError(f"Frame '{path}' has dtype {img.dtype}; expected an 8- or 16-bit image")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    elif img.shape[-1] == 2:  # grey + alpha
        img = np.repeat(img[..., :1], 3, axis=-1)
    elif img.shape[-1] == 4:
        img = img[..., :3]
    return img


def _pad_to_even(frame: np.ndarray) -> np.ndarray:
    """Replicate the last row / column so that H and W are even (what yuv420p H.264 needs)."""
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    if pad_h or pad_w:
        frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frame


def _cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """Read ``key`` from a dict, a DictConfig or an attribute holder."""
    if cfg is None:
        return default
    if isinstance(cfg, (dict, DictConfig)):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


# ---------------------------------------------------------------------------------------------
# the mixin
# ---------------------------------------------------------------------------------------------
class SaverMixin:
    # every writer below is atomic: a system that wraps threestudio's in-place writers (the plugin's)
    # needs no temporary of its own here
    SAVER_WRITES_ATOMICALLY = True

    _save_dir: Optional[str] = None
    _wandb_logger: Optional[Any] = None

    DEFAULT_RGB_KWARGS = {"data_format": "HWC", "data_range": (0, 1)}
    DEFAULT_UV_KWARGS = {"data_format": "HWC", "data_range": (0, 1), "cmap": "checkerboard"}
    DEFAULT_GRAYSCALE_KWARGS = {"data_range": None, "cmap": "jet"}
    DEFAULT_GRID_KWARGS = {"align": "max"}

    # ---- where files go ----
    def set_save_dir(self, save_dir: str):
        self._save_dir = save_dir

    def get_save_dir(self):
        if self._save_dir is None:
            raise ValueError(
                "Save dir is not set: call set_save_dir(path) before saving (the launcher sets it "
                "to <trial_dir>/save)."
            )
        return self._save_dir

    def get_save_path(self, filename):
        save_path = os.path.join(self.get_save_dir(), filename)
        os.makedirs(os.path.dirname(save_path), exist_ok=True)
        return save_path

    def convert_data(self, data):
        """Tensors become numpy arrays (detached, on the CPU); lists and dicts are converted item-wise."""
        if data is None or isinstance(data, np.ndarray):
            return data
        if isinstance(data, torch.Tensor):
            data = data.detach().cpu()
            if data.dtype == torch.bfloat16:  # numpy has no bfloat16
                data = data.float()
            return data.numpy()
        if isinstance(data, list):
            return [self.convert_data(item) for item in data]
        if isinstance(data, dict):
            return {key: self.convert_data(value) for key, value in data.items()}
        raise TypeError(
            f"Data must be a numpy.ndarray, torch.Tensor, list or dict, got {type(data).__name__}"
        )

    # ---- loggers ----
    def create_loggers(self, cfg_loggers: DictConfig) -> None:
        """Create a Lightning ``WandbLogger`` when ``cfg_loggers.wandb.enable`` is set."""
        wandb_cfg = _cfg_get(cfg_loggers, "wandb")
        if not _cfg_get(wandb_cfg, "enable", False):
            return
        try:
            import wandb  # noqa: F401
            from pytorch_lightning.loggers import WandbLogger
        except ImportError as err:
            raise ImportError(
                "system.loggers.wandb.enable=true needs the 'wandb' package: `pip install wandb`, "
                "or set system.loggers.wandb.enable=false."
            ) from err
        self._wandb_logger = WandbLogger(
            project=_cfg_get(wandb_cfg, "project"), name=_cfg_get(wandb_cfg, "name")
        )

    def get_loggers(self) -> List:
        return [self._wandb_logger] if self._wandb_logger else []

    def _log_media(self, name: Optional[str], step: Optional[int], path: str, video_format=None):
        """Send a written file to wandb under ``name``; a no-op without a wandb logger."""
        if not (name and self._wandb_logger):
            return
        import wandb

        media = wandb.Video(path, format=video_format) if video_format else wandb.Image(path)
        wandb.log({name: media, "trainer/global_step": step})

    # ---- RGB ----
    def get_rgb_image_(self, img, data_format, data_range, rgba=False):
        """Map ``img`` to uint8 RGB (RGBA if ``rgba``) [H, W', C].

        Floats are clipped to ``data_range`` and scaled to 0..255 (truncated); uint8 is kept as is.
        Channels beyond one image (e.g. 6 = two RGB images) become side-by-side panels, the last
        panel zero-padded to 3 (4) channels.
        """
        img = self.convert_data(img)
        if data_format not in ("CHW", "HWC"):
            raise ValueError(f"data_format must be 'CHW' or 'HWC', got {data_format!r}")
        if data_format == "CHW":
            img = img.transpose(1, 2, 0)
        if img.dtype != np.uint8:
            lo, hi = data_range[0], data_range[1]
            img = ((img.clip(lo, hi) - lo) / (hi - lo) * 255.0).astype(np.uint8)
        nc = 4 if rgba else 3
        panels = []
        for start in range(0, img.shape[-1], nc):
            panel = img[..., start : start + nc]
            missing = nc - panel.shape[-1]
            if missing:
                panel = np.concatenate(
                    [panel, np.zeros((*panel.shape[:2], missing), dtype=panel.dtype)], axis=-1
                )
            panels.append(panel)
        return np.concatenate(panels, axis=1)

    def _save_rgb_image(self, filename, img, data_format, data_range, name=None, step=None):
        # ``filename`` is already a full path here (used by save_rgb_image and the MTL writer)
        _write_image(filename, self.get_rgb_image_(img, data_format, data_range))
        self._log_media(name, step, filename)

    def save_rgb_image(
        self,
        filename,
        img,
        data_format=DEFAULT_RGB_KWARGS["data_format"],
        data_range=DEFAULT_RGB_KWARGS["data_range"],
        name: Optional[str] = None,
        step: Optional[int] = None,
    ) -> str:
        save_path = self.get_save_path(filename)
        self._save_rgb_image(save_path, img, data_format, data_range, name, step)
        return save_path

    # ---- UV ----
    def get_uv_image_(self, img, data_format, data_range, cmap):
        """Visualise UV coordinates: a 64x64 magenta/white checkerboard, or R=u, G=v."""
        img = self.convert_data(img)
        if data_format not in ("CHW", "HWC"):
            raise ValueError(f"data_format must be 'CHW' or 'HWC', got {data_format!r}")
        if cmap not in UV_CMAPS:
            raise ValueError(f"UV cmap must be one of {UV_CMAPS}, got {cmap!r}")
        if data_format == "CHW":
            img = img.transpose(1, 2, 0)
        lo, hi = data_range[0], data_range[1]
        uv = (img.clip(lo, hi) - lo) / (hi - lo)
        out = np.zeros((*uv.shape[:2], 3), dtype=np.uint8)
        if cmap == "checkerboard":
            n_grid = 64
            cells = (uv * n_grid).astype(int)
            even = (cells[..., 0] + cells[..., 1]) % 2 == 0
            out[...] = 255
            out[even] = (255, 0, 255)
        else:
            out[..., 0] = (uv[..., 0] * 255).astype(np.uint8)
            out[..., 1] = (uv[..., 1] * 255).astype(np.uint8)
        return out

    def save_uv_image(
        self,
        filename,
        img,
        data_format=DEFAULT_UV_KWARGS["data_format"],
        data_range=DEFAULT_UV_KWARGS["data_range"],
        cmap=DEFAULT_UV_KWARGS["cmap"],
    ) -> str:
        save_path = self.get_save_path(filename)
        _write_image(save_path, self.get_uv_image_(img, data_format, data_range, cmap))
        return save_path

    # ---- grayscale ----
    def get_grayscale_image_(self, img, data_range, cmap):
        """Map a [H, W] array to uint8 RGB [H, W, 3].

        NaNs become 0; values are normalised to [0, 1] by ``data_range`` (clipped) or, when it is
        None, by the image's own min and max; then coloured with ``cmap`` (None = grey).
        """
        if cmap not in GRAYSCALE_CMAPS:
            raise ValueError(f"Grayscale cmap must be one of {GRAYSCALE_CMAPS}, got {cmap!r}")
        img = np.nan_to_num(self.convert_data(img))
        if img.ndim == 3 and img.shape[-1] == 1:
            img = img[..., 0]
        if data_range is None:
            lo, hi = img.min(), img.max()
            unit = (img - lo) / (hi - lo) if hi > lo else np.zeros(img.shape, dtype=np.float32)
        else:
            lo, hi = data_range[0], data_range[1]
            unit = (img.clip(lo, hi) - lo) / (hi - lo)
        if cmap is None:
            return np.repeat((unit * 255.0).astype(np.uint8)[..., None], 3, axis=-1)
        if cmap == "jet":
            return _apply_jet(unit)
        if cmap == "magma":
            return _apply_magma(unit)
        return _apply_spectral(unit)

    def _save_grayscale_image(self, filename, img, data_range, cmap, name=None, step=None):
        _write_image(filename, self.get_grayscale_image_(img, data_range, cmap))
        self._log_media(name, step, filename)

    def save_grayscale_image(
        self,
        filename,
        img,
        data_range=DEFAULT_GRAYSCALE_KWARGS["data_range"],
        cmap=DEFAULT_GRAYSCALE_KWARGS["cmap"],
        name: Optional[str] = None,
        step: Optional[int] = None,
    ) -> str:
        save_path = self.get_save_path(filename)
        self._save_grayscale_image(save_path, img, data_range, cmap, name, step)
        return save_path

    # ---- grids ----
    def _render_grid_cell(self, cell: Dict[str, Any]) -> np.ndarray:
        kind = cell["type"]
        kwargs = dict(cell.get("kwargs") or {})
        if kind == "rgb":
            return self.get_rgb_image_(cell["img"], **{**self.DEFAULT_RGB_KWARGS, **kwargs})
        if kind == "uv":
            return self.get_uv_image_(cell["img"], **{**self.DEFAULT_UV_KWARGS, **kwargs})
        if kind == "grayscale":
            return self.get_grayscale_image_(cell["img"], **{**self.DEFAULT_GRAYSCALE_KWARGS, **kwargs})
        raise ValueError(f"Image grid cell type must be 'rgb', 'uv' or 'grayscale', got {kind!r}")

    @staticmethod
    def _grid_cell_size(cells: List[np.ndarray], align) -> Tuple[int, int]:
        if align == "max":
            return max(c.shape[0] for c in cells), max(c.shape[1] for c in cells)
        if align == "min":
            return min(c.shape[0] for c in cells), min(c.shape[1] for c in cells)
        if isinstance(align, int):
            return align, align
        if isinstance(align, (tuple, list)) and len(align) == 2 and all(isinstance(a, int) for a in align):
            return int(align[0]), int(align[1])
        raise ValueError(f"Unsupported image grid align: {align}, should be min, max, int or (int, int)")

    def get_image_grid_(self, imgs, align):
        """One row of cells side by side, or (a list of rows) rows stacked top to bottom.

        Within a row every cell is resized (bilinear) to a common (h, w) chosen by ``align``: the
        largest or smallest height and width in the row, a square size, or an explicit (h, w).
        """
        if isinstance(imgs[0], list):
            rows = [self.get_image_grid_(row, align) for row in imgs]
            if len({row.shape[1] for row in rows}) > 1:
                raise ValueError(
                    f"Image grid rows have different widths {[row.shape[1] for row in rows]}: "
                    "give every row the same number of cells, or a fixed align"
                )
            return np.concatenate(rows, axis=0)
        cells = [self._render_grid_cell(cell) for cell in imgs]
        h, w = self._grid_cell_size(cells, align)
        cells = [c if c.shape[:2] == (h, w) else _resize_bilinear(c, h, w) for c in cells]
        return np.concatenate(cells, axis=1)

    @staticmethod
    def _draw_texts(img: np.ndarray, texts) -> np.ndarray:
        """Write ``texts[i]`` at the left edge of the i-th horizontal band, black with a white halo."""
        try:
            from PIL import Image, ImageDraw
        except ImportError:
            warn("Pillow is not installed: the texts of the image grid are not drawn")
            return img
        canvas = Image.fromarray(img)
        draw = ImageDraw.Draw(canvas)
        band = canvas.size[1] // len(texts)
        for i, text in enumerate(texts):
            top = band * i
            for dx, dy in ((2, 1), (0, 1), (2, -1), (0, -1)):
                draw.text((dx, top + dy), f"{text}", (255, 255, 255))
            draw.text((1, top), f"{text}", (0, 0, 0))
        return np.asarray(canvas)

    def save_image_grid(
        self,
        filename,
        imgs,
        align=DEFAULT_GRID_KWARGS["align"],
        name: Optional[str] = None,
        step: Optional[int] = None,
        texts: Optional[List[float]] = None,
    ):
        save_path = self.get_save_path(filename)
        img = self.get_image_grid_(imgs, align=align)
        if texts is not None:
            img = self._draw_texts(img, texts)
        _write_image(save_path, img)
        self._log_media(name, step, save_path)
        return save_path

    # ---- raw images ----
    def save_image(self, filename, img) -> str:
        """Write a uint8 or uint16 grey [H, W], RGB or RGBA [H, W, 3|4] array as it is."""
        save_path = self.get_save_path(filename)
        img = self.convert_data(img)
        if img.dtype not in (np.uint8, np.uint16):
            raise TypeError(f"save_image needs a uint8 or uint16 array, got {img.dtype}")
        _write_image(save_path, img)
        return save_path

    def save_cubemap(self, filename, img, data_range=(0, 1), rgba=False) -> str:
        """Unfold a [6, S, S, C] cube map into a 3x4 cross (faces +x,-x,+y,-y,+z,-z = 0..5)."""
        save_path = self.get_save_path(filename)
        img = self.convert_data(img)
        if not (img.ndim == 4 and img.shape[0] == 6 and img.shape[1] == img.shape[2]):
            raise ValueError(f"A cube map must have shape [6, S, S, C], got {list(img.shape)}")
        nc = 4 if rgba else 3
        crosses = []
        for start in range(0, img.shape[-1], nc):
            faces = [
                self.get_rgb_image_(img[i, ..., start : start + nc], "HWC", data_range, rgba=rgba)
                for i in range(6)
            ]
            blank = np.zeros_like(faces[0])
            crosses.append(
                np.concatenate(
                    [
                        np.concatenate([blank, faces[2], blank, blank], axis=1),
                        np.concatenate([faces[1], faces[4], faces[0], faces[5]], axis=1),
                        np.concatenate([blank, faces[3], blank, blank], axis=1),
                    ],
                    axis=0,
                )
            )
        _write_image(save_path, np.concatenate(crosses, axis=1))
        return save_path

    # ---- data ----
    def save_data(self, filename, data) -> str:
        """A dict goes to ``.npz`` (one array per key), anything else to ``.npy``."""
        data = self.convert_data(data)
        suffix = ".npz" if isinstance(data, dict) else ".npy"
        if not filename.endswith(suffix):
            filename += suffix
        save_path = self.get_save_path(filename)
        buffer = io.BytesIO()
        if isinstance(data, dict):
            np.savez(buffer, **data)
        else:
            np.save(buffer, data)
        write_bytes(save_path, buffer.getbuffer())
        return save_path

    def save_state_dict(self, filename, data) -> str:
        save_path = self.get_save_path(filename)
        buffer = io.BytesIO()
        torch.save(data, buffer)
        write_bytes(save_path, buffer.getbuffer())
        return save_path

    def save_file(self, filename, src_path) -> str:
        save_path = self.get_save_path(filename)
        copy_file(src_path, save_path)
        return save_path

    def save_json(self, filename, payload) -> str:
        save_path = self.get_save_path(filename)
        write_text(save_path, json.dumps(payload))
        return save_path

    # ---- videos ----
    def save_img_sequence(
        self,
        filename,
        img_dir,
        matcher,
        save_format="mp4",
        fps=30,
        name: Optional[str] = None,
        step: Optional[int] = None,
    ) -> str:
        """Assemble the images of ``<save_dir>/<img_dir>`` whose names match the regex ``matcher``
        into ``filename`` (+ ``.mp4`` / ``.gif``), ordered by the int value of the first group."""
        if save_format not in ("gif", "mp4"):
            raise ValueError(f"save_format must be 'gif' or 'mp4', got {save_format!r}")
        if not filename.endswith(save_format):
            filename += f".{save_format}"
        save_path = self.get_save_path(filename)
        pattern = re.compile(matcher)
        img_dir = os.path.join(self.get_save_dir(), img_dir)
        names = [f for f in os.listdir(img_dir) if pattern.search(f)]
        names.sort(key=lambda f: int(pattern.search(f).groups()[0]))
        if not names:
            raise ValueError(f"No file in '{img_dir}' matches {matcher!r}: nothing to put in {save_path}")
        frames = [_read_frame_rgb(os.path.join(img_dir, f)) for f in names]
        sizes = {frame.shape for frame in frames}
        if len(sizes) > 1:
            raise ValueError(f"Frames in '{img_dir}' differ in size ({sorted(sizes)}): cannot make a video")

        if save_format == "gif":
            # GIF stores delays in 1/100 s; loop=0 plays forever
            write_bytes(save_path, iio.imwrite("<bytes>", np.stack(frames), extension=".gif",
                                               duration=1000.0 / fps, loop=0))
        else:
            with temporary_path(save_path, verify=check_complete_mp4) as tmp:  # ffmpeg writes by path
                writer = imageio.v2.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, macro_block_size=1)
                try:
                    for frame in frames:
                        writer.append_data(_pad_to_even(frame))
                finally:
                    writer.close()
        self._log_media(name, step, save_path, video_format=save_format)
        return save_path

    # ---- meshes ----
    def save_mesh(self, filename, v_pos, t_pos_idx, v_tex=None, t_tex_idx=None) -> str:
        try:
            import trimesh
        except ImportError as err:
            raise ImportError(
                "save_mesh needs the 'trimesh' package (`pip install trimesh`); "
                "save_obj writes OBJ files without it."
            ) from err
        save_path = self.get_save_path(filename)
        mesh = trimesh.Trimesh(vertices=self.convert_data(v_pos), faces=self.convert_data(t_pos_idx))
        data = mesh.export(file_type=os.path.splitext(save_path)[1][1:].lower())
        if isinstance(data, dict):  # a format of several files (glTF): each beside the first
            data = {os.path.basename(save_path) if name == "model.gltf" else name: v for name, v in data.items()}
            for name, content in data.items():
                write_bytes(os.path.join(os.path.dirname(save_path), name), content)
        else:
            write_bytes(save_path, data.encode("utf-8") if isinstance(data, str) else data)
        return save_path

    def save_obj(
        self,
        filename: str,
        mesh,
        save_mat: bool = False,
        save_normal: bool = False,
        save_uv: bool = False,
        save_vertex_color: bool = False,
        map_Kd=None,
        map_Ks=None,
        map_Bump=None,
        map_Pm=None,
        map_Pr=None,
        map_format: str = "jpg",
    ) -> List[str]:
        """Write ``mesh`` (anything with ``v_pos``, ``t_pos_idx`` and, as asked, ``v_nrm``, ``v_tex``,
        ``t_tex_idx``, ``v_rgb``) as OBJ, plus an MTL file and texture maps when ``save_mat``."""
        save_paths: List[str] = []
        if not filename.endswith(".obj"):
            filename += ".obj"
        v_nrm = self.convert_data(mesh.v_nrm) if save_normal else None
        v_tex = self.convert_data(mesh.v_tex) if save_uv else None
        t_tex_idx = self.convert_data(mesh.t_tex_idx) if save_uv else None
        v_rgb = self.convert_data(mesh.v_rgb) if save_vertex_color else None
        matname, mtllib = None, None
        if save_mat:
            matname = "default"
            mtl_filename = filename[: -len(".obj")] + ".mtl"
            mtllib = os.path.basename(mtl_filename)
            save_paths += self._save_mtl(
                mtl_filename,
                matname,
                map_Kd=self.convert_data(map_Kd),
                map_Ks=self.convert_data(map_Ks),
                map_Bump=self.convert_data(map_Bump),
                map_Pm=self.convert_data(map_Pm),
                map_Pr=self.convert_data(map_Pr),
                map_format=map_format,
            )
        save_paths.append(
            self._save_obj(
                filename,
                self.convert_data(mesh.v_pos),
                self.convert_data(mesh.t_pos_idx),
                v_nrm=v_nrm,
                v_tex=v_tex,
                t_tex_idx=t_tex_idx,
                v_rgb=v_rgb,
                matname=matname,
                mtllib=mtllib,
            )
        )
        return save_paths

    def _save_obj(
        self,
        filename,
        v_pos,
        t_pos_idx,
        v_nrm=None,
        v_tex=None,
        t_tex_idx=None,
        v_rgb=None,
        matname=None,
        mtllib=None,
    ) -> str:
        lines = []
        if matname is not None:
            lines += [f"mtllib {mtllib}", "g object", f"usemtl {matname}"]
        for i, v in enumerate(v_pos):
            line = f"v {v[0]} {v[1]} {v[2]}"
            if v_rgb is not None:
                line += f" {v_rgb[i][0]} {v_rgb[i][1]} {v_rgb[i][2]}"
            lines.append(line)
        if v_nrm is not None:
            lines += [f"vn {n[0]} {n[1]} {n[2]}" for n in v_nrm]
        if v_tex is not None:
            lines += [f"vt {t[0]} {1.0 - t[1]}" for t in v_tex]  # OBJ's v axis points up
        for i, face in enumerate(t_pos_idx):
            corners = []
            for j in range(3):
                tex = f"{t_tex_idx[i][j] + 1}" if v_tex is not None else ""
                nrm = f"{face[j] + 1}" if v_nrm is not None else ""
                corners.append(f"{face[j] + 1}/{tex}/{nrm}")
            lines.append("f " + " ".join(corners))
        save_path = self.get_save_path(filename)
        write_text(save_path, "".join(line + "\n" for line in lines))
        return save_path

    def _save_mtl(
        self,
        filename,
        matname,
        Ka=(0.0, 0.0, 0.0),
        Kd=(1.0, 1.0, 1.0),
        Ks=(0.0, 0.0, 0.0),
        map_Kd=None,
        map_Ks=None,
        map_Bump=None,
        map_Pm=None,
        map_Pr=None,
        map_format="jpg",
        step: Optional[int] = None,
    ) -> List[str]:
        mtl_save_path = self.get_save_path(filename)
        folder = os.path.dirname(mtl_save_path)
        save_paths = [mtl_save_path]
        lines = [f"newmtl {matname}", f"Ka {Ka[0]} {Ka[1]} {Ka[2]}"]

        def texture(key, stem, value, log_suffix, grey):
            path = os.path.join(folder, f"{stem}.{map_format}")
            lines.append(f"{key} {stem}.{map_format}")
            log_name = f"{matname}_{log_suffix}"
            if grey:
                self._save_grayscale_image(path, value, (0, 1), None, name=log_name, step=step)
            else:
                self._save_rgb_image(path, value, "HWC", (0, 1), name=log_name, step=step)
            save_paths.append(path)

        if map_Kd is not None:
            texture("map_Kd", "texture_kd", map_Kd, "Kd", grey=False)
        else:
            lines.append(f"Kd {Kd[0]} {Kd[1]} {Kd[2]}")
        if map_Ks is not None:
            texture("map_Ks", "texture_ks", map_Ks, "Ks", grey=False)
        else:
            lines.append(f"Ks {Ks[0]} {Ks[1]} {Ks[2]}")
        if map_Bump is not None:
            texture("map_Bump", "texture_nrm", map_Bump, "Bump", grey=False)
        if map_Pm is not None:
            texture("map_Pm", "texture_metallic", map_Pm, "refl", grey=True)
        if map_Pr is not None:
            texture("map_Pr", "texture_roughness", map_Pr, "Ns", grey=True)
        write_text(mtl_save_path, "".join(line + "\n" for line in lines))
        return save_paths
