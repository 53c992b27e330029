"""SaverMixin writes what a viewer expects: RGB order, threestudio's scaling, grid layout, videos."""
import json
import os
import struct
import sys
import zlib

import imageio
import imageio.v3 as iio
import numpy as np
import pytest
import torch

from threestudio_lucid.host.utils.saving import SaverMixin


class Saver(SaverMixin):
    pass


@pytest.fixture
def saver(tmp_path):
    s = Saver()
    s.set_save_dir(str(tmp_path))
    return s


def _corner_image():
    """A 2x3 uint8 target: red, green, blue / white, black, grey; and the float that encodes it.

    The float values sit half a level above each byte, so threestudio's truncating conversion
    gives back exactly the target (and rounding would not).
    """
    target = np.array(
        [[[255, 0, 0], [0, 255, 0], [0, 0, 255]], [[255, 255, 255], [0, 0, 0], [100, 100, 100]]],
        dtype=np.uint8,
    )
    as_float = (np.minimum(target.astype(np.float32) + 0.5, 255.0)) / 255.0
    return target, as_float


def _decode_png16(path):
    """Minimal decoder for the unfiltered 16-bit PNGs the saver writes (independent of Pillow)."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag, payload = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if tag == b"IHDR":
            header = struct.unpack(">IIBBBBB", payload)
        elif tag == b"IDAT":
            idat += payload
        pos += 12 + length
    width, height, depth, color_type = header[:4]
    channels = {0: 1, 4: 2, 2: 3, 6: 4}[color_type]
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + width * channels * 2)
    assert depth == 16 and (rows[:, 0] == 0).all()
    return rows[:, 1:].copy().view(">u2").astype(np.uint16).reshape(height, width, channels)


# ---- paths ----
def test_paths_require_a_save_dir():
    with pytest.raises(ValueError, match="set_save_dir"):
        Saver().save_rgb_image("a.png", np.zeros((2, 2, 3)))


def test_paths_are_created_under_the_save_dir(saver, tmp_path):
    path = saver.save_rgb_image("it0-test/deep/0.png", np.zeros((2, 2, 3)))
    assert path == os.path.join(str(tmp_path), "it0-test/deep/0.png")
    assert os.path.isfile(path)


def test_convert_data_recurses_into_lists_and_dicts(saver):
    out = saver.convert_data({"a": [torch.ones(2, requires_grad=True), np.zeros(1)], "b": None})
    assert isinstance(out["a"][0], np.ndarray) and out["b"] is None
    with pytest.raises(TypeError):
        saver.convert_data("text")


# ---- RGB ----
def test_rgb_image_round_trip_keeps_rgb_order_hwc(saver):
    target, as_float = _corner_image()
    path = saver.save_rgb_image("rgb.png", as_float)
    np.testing.assert_array_equal(iio.imread(path), target)


def test_rgb_image_chw_tensor_matches_hwc(saver):
    target, as_float = _corner_image()
    chw = torch.from_numpy(as_float).permute(2, 0, 1)
    path = saver.save_rgb_image("rgb_chw.png", chw, data_format="CHW")
    np.testing.assert_array_equal(iio.imread(path), target)


def test_rgb_image_data_range_minus_one_one_and_clipping(saver):
    target, as_float = _corner_image()
    signed = as_float * 2.0 - 1.0
    signed[0, 0, 0] = 7.0  # out of range: clipped to 1 -> 255
    path = saver.save_rgb_image("rgb_signed.png", signed, data_range=(-1, 1))
    # (x*2-1 -> x) loses a little float precision; half-level offsets keep truncation exact
    np.testing.assert_array_equal(iio.imread(path), target)


def test_rgb_image_uint8_is_written_unchanged(saver):
    target, _ = _corner_image()
    path = saver.save_rgb_image("rgb_u8.png", target, data_range=(-1, 1))
    np.testing.assert_array_equal(iio.imread(path), target)


def test_rgb_six_channels_become_two_panels_side_by_side(saver):
    img = np.zeros((4, 5, 6), np.float32)
    img[..., 0] = 1.0  # first panel red
    img[..., 5] = 1.0  # second panel blue
    out = iio.imread(saver.save_rgb_image("two.png", img))
    assert out.shape == (4, 10, 3)
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[0, 5], [0, 0, 255])


def test_rgba_helper_keeps_alpha(saver):
    img = np.zeros((2, 2, 4), np.uint8)
    img[..., 3] = 77
    out = saver.get_rgb_image_(img, "HWC", (0, 1), rgba=True)
    assert out.shape == (2, 2, 4) and (out[..., 3] == 77).all()


# ---- grayscale ----
def test_grayscale_without_cmap_is_min_max_normalised_grey(saver):
    ramp = np.array([[2.0, 3.0], [4.0, 6.0]], np.float32)  # min 2, max 6
    out = iio.imread(saver.save_grayscale_image("g.png", ramp, cmap=None))
    assert out.shape == (2, 2, 3)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    np.testing.assert_array_equal(out[..., 0], [[0, 63], [127, 255]])  # truncated (x-2)/4*255


def test_grayscale_jet_ends_are_blue_and_red_and_scale_invariant(saver):
    ramp = np.linspace(0.0, 1.0, 32, dtype=np.float32).reshape(4, 8)
    out = iio.imread(saver.save_grayscale_image("jet.png", ramp, cmap="jet"))
    np.testing.assert_allclose(out[0, 0], [0, 0, 128], atol=1)  # min: dark blue
    np.testing.assert_allclose(out[-1, -1], [128, 0, 0], atol=1)  # max: dark red
    mid = out.reshape(-1, 3)[16]
    assert mid[1] > 200  # the middle of jet is green-ish
    # min-max normalisation: an affine change of the data gives the same picture
    again = iio.imread(saver.save_grayscale_image("jet2.png", ramp * 40.0 - 3.0))
    np.testing.assert_array_equal(out, again)


def test_grayscale_fixed_range_clips(saver):
    img = np.array([[-5.0, 0.5, 9.0]], np.float32)
    out = saver.get_grayscale_image_(img, data_range=(0, 1), cmap=None)
    np.testing.assert_array_equal(out[0, :, 0], [0, 127, 255])


def test_grayscale_constant_map_and_nans_are_safe(saver):
    out = saver.get_grayscale_image_(np.full((3, 3), 4.0), data_range=None, cmap=None)
    assert (out == 0).all()
    out = saver.get_grayscale_image_(np.array([[np.nan, 1.0]]), data_range=(0, 1), cmap=None)
    np.testing.assert_array_equal(out[0, :, 0], [0, 255])


def test_grayscale_magma_and_spectral_colours(saver):
    ramp = np.array([[0.0, 1.0]], np.float32)
    magma = saver.get_grayscale_image_(ramp, None, "magma")
    assert magma[0, 0, 0] > 240 and magma[0, 0, 2] > 150  # reversed: 0 -> pale yellow
    assert magma[0, 1].max() < 10  # 1 -> near black
    spectral = saver.get_grayscale_image_(ramp, None, "spectral")
    assert spectral[0, 0, 0] > spectral[0, 0, 2]  # 0 -> red end
    assert spectral[0, 1, 2] > spectral[0, 1, 0]  # 1 -> blue end
    with pytest.raises(ValueError):
        saver.get_grayscale_image_(ramp, None, "viridis")


def test_uv_image_checkerboard_and_color(saver):
    uv = np.zeros((4, 4, 2), np.float32)
    uv[0, 1] = (1.0 / 64 + 1e-4, 0.0)  # next cell -> odd -> white
    out = iio.imread(saver.save_uv_image("uv.png", uv))
    np.testing.assert_array_equal(out[0, 0], [255, 0, 255])
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])
    col = saver.get_uv_image_(np.full((2, 2, 2), 0.5, np.float32), "HWC", (0, 1), "color")
    np.testing.assert_array_equal(col[0, 0], [127, 127, 0])


# ---- grids ----
def _solid(h, w, rgb):
    return {"type": "rgb", "img": np.broadcast_to(np.array(rgb, np.float32), (h, w, 3)).copy(), "kwargs": {}}


def test_image_grid_two_rows_three_columns_layout(saver):
    red, green, blue = (1, 0, 0), (0, 1, 0), (0, 0, 1)
    rows = [
        [_solid(8, 10, red), _solid(16, 12, green), {"type": "grayscale", "img": np.random.rand(4, 6), "kwargs": {"cmap": None}}],
        [
            _solid(6, 12, green),
            {"type": "uv", "img": np.random.rand(10, 4, 2), "kwargs": {"cmap": "color"}},
            _solid(12, 8, blue),
        ],
    ]
    out = iio.imread(saver.save_image_grid("grid.png", rows))
    # align="max" per row: row 1 cells -> 16x12, row 2 cells -> 12x12; rows stacked
    assert out.shape == (16 + 12, 3 * 12, 3)
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])  # red, top-left
    np.testing.assert_array_equal(out[5, 13], [0, 255, 0])  # green, row 1 col 2
    np.testing.assert_array_equal(out[16, 0], [0, 255, 0])  # green, row 2 col 1
    np.testing.assert_array_equal(out[-1, -1], [0, 0, 255])  # blue, bottom-right


@pytest.mark.parametrize(
    "align, cell_hw", [("max", (16, 12)), ("min", (8, 6)), (10, (10, 10)), ((5, 7), (5, 7))]
)
def test_image_grid_align_options(saver, align, cell_hw):
    row = [_solid(8, 6, (1, 0, 0)), _solid(16, 12, (0, 0, 1))]
    out = saver.get_image_grid_(row, align)
    assert out.shape == (cell_hw[0], 2 * cell_hw[1], 3)
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[-1, -1], [0, 0, 255])


def test_image_grid_rejects_unknown_align_and_type(saver):
    with pytest.raises(ValueError, match="align"):
        saver.get_image_grid_([_solid(2, 2, (1, 1, 1))], "mean")
    with pytest.raises(ValueError, match="type"):
        saver.get_image_grid_([{"type": "depth", "img": np.zeros((2, 2)), "kwargs": {}}], "max")


def test_image_grid_texts_are_drawn(saver):
    row = [_solid(32, 64, (0.5, 0.5, 0.5))]
    plain = iio.imread(saver.save_image_grid("plain.png", row))
    labelled = iio.imread(saver.save_image_grid("text.png", row, texts=["t=1", "t=2"]))
    assert labelled.shape == plain.shape
    assert (labelled != plain).any()


# ---- raw images ----
def test_save_image_uint8_rgba_and_uint16(saver):
    rgba = np.random.randint(0, 256, (3, 4, 4), dtype=np.uint8)
    np.testing.assert_array_equal(iio.imread(saver.save_image("rgba.png", rgba)), rgba)
    rgb16 = np.random.randint(0, 65536, (3, 5, 3)).astype(np.uint16)
    np.testing.assert_array_equal(_decode_png16(saver.save_image("rgb16.png", rgb16)), rgb16)
    grey16 = np.random.randint(0, 65536, (3, 5)).astype(np.uint16)
    read = iio.imread(saver.save_image("grey16.png", grey16))  # Pillow decodes our encoder's output
    np.testing.assert_array_equal(read, grey16)
    with pytest.raises(TypeError):
        saver.save_image("bad.png", np.zeros((2, 2, 3), np.float32))


def test_cubemap_is_a_cross(saver):
    faces = np.zeros((6, 4, 4, 3), np.float32)
    faces[4] = 1.0  # +z face sits in the centre of the middle row
    out = iio.imread(saver.save_cubemap("cube.png", faces))
    assert out.shape == (12, 16, 3)
    assert (out[4:8, 4:8] == 255).all() and out[:4].sum() == 0


# ---- videos ----
def _distinct_colours(n):
    return [
        np.array([(37 * i) % 256, (255 - 19 * i) % 256, (90 + 53 * i) % 256], np.uint8) for i in range(n)
    ]


def _write_frames(saver, folder, colours, h=32, w=48):
    for i, colour in enumerate(colours):
        saver.save_image(f"{folder}/{i}.png", np.broadcast_to(colour, (h, w, 3)).copy())
    saver.save_json(f"{folder}/notes.json", {"not": "a frame"})


def test_img_sequence_mp4_keeps_numeric_order(saver):
    colours = _distinct_colours(12)
    _write_frames(saver, "it5-test", colours)
    path = saver.save_img_sequence("it5-test", "it5-test", r"(\d+)\.png", save_format="mp4", fps=30)
    assert path.endswith("it5-test.mp4") and os.path.isfile(path)
    reader = imageio.v2.get_reader(path, format="FFMPEG")
    frames = [np.asarray(f) for f in reader]
    reader.close()
    assert len(frames) == 12
    assert frames[0].shape == (32, 48, 3)
    for frame, colour in zip(frames, colours):  # 0,1,2,...,11, not 0,1,10,11,2,...
        np.testing.assert_allclose(frame[8:24, 8:40].reshape(-1, 3).mean(0), colour, atol=6)


def test_img_sequence_mp4_accepts_odd_frame_sizes(saver):
    _write_frames(saver, "odd", _distinct_colours(3), h=33, w=47)
    path = saver.save_img_sequence("odd", "odd", r"(\d+)\.png", save_format="mp4", fps=10)
    reader = imageio.v2.get_reader(path, format="FFMPEG")
    frame = np.asarray(reader.get_data(0))
    reader.close()
    assert frame.shape == (34, 48, 3)  # padded by one replicated row and column, not rescaled


def test_img_sequence_gif_keeps_numeric_order(saver):
    colours = _distinct_colours(12)
    _write_frames(saver, "gif-frames", colours, h=16, w=16)
    path = saver.save_img_sequence("anim", "gif-frames", r"(\d+)\.png", save_format="gif", fps=10)
    assert path.endswith("anim.gif")
    frames = iio.imread(path, index=None)
    assert frames.shape[:3] == (12, 16, 16)
    for frame, colour in zip(frames, colours):
        np.testing.assert_allclose(frame[8, 8, :3], colour, atol=4)


def test_img_sequence_errors(saver):
    with pytest.raises(ValueError, match="save_format"):
        saver.save_img_sequence("x", "x", r"(\d+)\.png", save_format="avi")
    os.makedirs(os.path.join(saver.get_save_dir(), "empty"))
    with pytest.raises(ValueError, match="matches"):
        saver.save_img_sequence("x", "empty", r"(\d+)\.png")


# ---- data ----
def test_save_json_data_file_and_state_dict(saver, tmp_path):
    path = saver.save_json("meta/info.json", {"a": 1, "b": [1, 2]})
    assert json.load(open(path)) == {"a": 1, "b": [1, 2]}

    path = saver.save_data("arrays/d", {"x": torch.arange(3), "y": np.ones(2)})
    assert path.endswith("d.npz")
    loaded = np.load(path)
    np.testing.assert_array_equal(loaded["x"], [0, 1, 2])

    path = saver.save_data("arrays/single.npy", torch.eye(2))
    assert path.endswith("single.npy") and not path.endswith(".npy.npy")
    np.testing.assert_array_equal(np.load(path), np.eye(2))

    src = tmp_path / "source.txt"
    src.write_text("hello")
    path = saver.save_file("copies/source.txt", str(src))
    assert open(path).read() == "hello"

    path = saver.save_state_dict("sd.pth", {"w": torch.ones(2)})
    assert torch.equal(torch.load(path)["w"], torch.ones(2))


def test_save_obj_writes_text_without_a_mesh_library(saver):
    class Mesh:
        v_pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        t_pos_idx = torch.tensor([[0, 1, 2]])
        v_nrm = torch.tensor([[0.0, 0.0, 1.0]] * 3)

    paths = saver.save_obj("mesh/tri", Mesh(), save_normal=True)
    assert len(paths) == 1 and paths[0].endswith("tri.obj")
    lines = open(paths[0]).read().splitlines()
    assert lines[0] == "v 0.0 0.0 0.0"
    assert lines[-1] == "f 1//1 2//2 3//3"


def test_save_mesh_without_trimesh_says_so(saver, monkeypatch):
    monkeypatch.setitem(sys.modules, "trimesh", None)  # `import trimesh` fails as where it is not installed
    with pytest.raises(ImportError, match="trimesh"):
        saver.save_mesh("m.obj", torch.zeros(3, 3), torch.zeros(1, 3, dtype=torch.long))


# ---- loggers ----
def test_loggers_are_off_unless_wandb_is_enabled(saver):
    saver.create_loggers({"wandb": {"enable": False, "project": "p", "name": "n"}})
    assert saver.get_loggers() == []
    # name/step without a wandb logger: the file is written, nothing is logged
    saver.save_rgb_image("logged.png", np.zeros((2, 2, 3)), name="val", step=3)


def test_enabling_wandb_without_the_package_is_a_clear_error(saver):
    try:
        import wandb  # noqa: F401

        pytest.skip("wandb is installed")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="wandb.enable=false"):
        saver.create_loggers({"wandb": {"enable": True, "project": "p", "name": "n"}})
