"""The analytic renderer of the toy objects: pixel values, silhouettes and depths known in closed
form, the two-faced penguin, and the host's camera conventions."""
import math

import pytest
import torch

from threestudio_lucid.host.data.uncond import RandomCameraDataModule
from threestudio_lucid.toy_world import objects as toy
from threestudio_lucid.toy_world.objects import OBJECTS, camera_rays, get_object, orbit_c2w, render_object

DIST = 4.0
FOVY = math.radians(35.0)


def render(key, elevation, azimuth, size=33, distance=DIST, fovy=FOVY, background=(1.0, 1.0, 1.0)):
    c2w = orbit_c2w(torch.tensor([float(elevation)]), torch.tensor([float(azimuth)]), torch.tensor([distance]))
    out = render_object(get_object(key), c2w, torch.tensor([fovy]), size, size, background)
    return {k: v[0] for k, v in out.items()}


def lambert(albedo, normal):
    light = torch.tensor(toy.LIGHT_DIRECTION)
    light = light / light.norm()
    return torch.tensor(albedo) * (toy.AMBIENT + toy.DIFFUSE * max(0.0, float(torch.tensor(normal) @ light)))


def test_catalogue_has_five_objects_with_keys_and_captions():
    assert len(OBJECTS) >= 5
    assert get_object("cube") is get_object("a red cube")
    with pytest.raises(KeyError, match="known objects"):
        get_object("a teapot")


def test_cube_front_face_colour_and_depth_at_the_image_centre():
    out = render("cube", 0, 0)  # odd size: the centre pixel's ray is the optical axis, along -x
    c = 16
    assert torch.allclose(out["rgb"][c, c], lambert(toy.RED, (1.0, 0.0, 0.0)), atol=1e-6)
    assert out["alpha"][c, c, 0] == 1.0
    assert out["depth"][c, c, 0] == pytest.approx(DIST - 0.33, abs=1e-5)
    assert torch.all(out["rgb"][0, 0] == 1.0) and out["alpha"][0, 0, 0] == 0 and out["depth"][0, 0, 0] == 0


@pytest.mark.parametrize("key,surface", [("cube", 0.33), ("ball", 0.45), ("cone", 0.4 * 0.45 / 0.8), ("donut", 0.38 + 0.15)])
def test_depth_at_the_centre_is_distance_minus_the_surface_offset(key, surface):
    out = render(key, 0, 0)
    assert out["depth"][16, 16, 0] == pytest.approx(DIST - surface, abs=2e-4)


def test_sphere_silhouette_area_is_pi_r_squared_in_pixels():
    size = 128
    out = render("ball", 20, 33, size=size)
    focal = 0.5 * size / math.tan(FOVY / 2)
    # the silhouette of a sphere of radius r at distance d is a disk of radius f tan(asin(r / d))
    r_px = focal * math.tan(math.asin(0.45 / DIST))
    assert float(out["alpha"].sum()) == pytest.approx(math.pi * r_px**2, rel=0.015)
    assert float(out["depth"][out["depth"] > 0].min()) == pytest.approx(DIST - 0.45, abs=1e-3)


def test_donut_shows_its_hole_from_above_and_its_tube_from_the_side():
    assert render("donut", 85, 0)["alpha"][16, 16, 0] == 0  # looking down the axis through the hole
    assert render("donut", 0, 0)["alpha"][16, 16, 0] == 1


def test_penguin_shows_its_white_front_at_azimuth_0_and_not_at_180():
    front, back = render("penguin", 0, 0, size=64), render("penguin", 0, 180, size=64)

    def white(out):  # bright pixels on the object
        return (out["alpha"][..., 0] > 0) & (out["rgb"].min(dim=-1).values > 0.5)

    assert front["rgb"][32, 32].min() > 0.5  # the belly
    assert back["rgb"][32, 32].max() < 0.1  # the black back
    assert white(front).sum() > 0.2 * front["alpha"].sum()  # a fifth of the front view is white
    assert white(back).sum() == 0
    # same silhouette area either way (the shape is nearly mirror-symmetric), different colours
    assert float(front["alpha"].sum()) == pytest.approx(float(back["alpha"].sum()), rel=0.1)


@pytest.mark.parametrize("key", list(OBJECTS))
def test_objects_fit_their_bounding_radius(key):
    obj = get_object(key)
    el, az = torch.tensor([-40.0, 0.0, 30.0, 80.0]), torch.tensor([0.0, 100.0, 200.0, 300.0])
    c2w, fovy = orbit_c2w(el, az, torch.full((4,), 2.0)), torch.full((4,), math.radians(60))
    tight = render_object(obj, c2w, fovy, 48, 48)
    loose_obj = toy.ToyObject(obj.key, obj.name, obj.primitives, bounding_radius=5.0)
    loose = render_object(loose_obj, c2w, fovy, 48, 48)
    assert torch.equal(tight["alpha"], loose["alpha"]) and tight["alpha"].sum() > 0
    assert obj.bounding_radius <= 0.6


def test_renders_are_deterministic_and_independent_of_the_chunk_size():
    c2w, fovy = orbit_c2w(torch.tensor([10.0]), torch.tensor([70.0]), torch.tensor([DIST])), torch.tensor([FOVY])
    a = render_object(get_object("penguin"), c2w, fovy, 40, 40)
    b = render_object(get_object("penguin"), c2w, fovy, 40, 40, chunk_rays=97)
    for k in a:
        assert torch.equal(a[k], b[k])


def test_cameras_and_rays_follow_the_random_camera_datamodule():
    still = dict(camera_perturb=0.0, center_perturb=0.0, up_perturb=0.0)
    dm = RandomCameraDataModule(
        dict(height=12, width=12, batch_size=5, camera_distance_range=(3.0, 5.0), fovy_range=(30, 70), **still)
    )
    dm.setup("fit")
    dm.train_dataset.update_step(0, 1)
    torch.manual_seed(0)
    batch = next(iter(dm.train_dataloader()))
    c2w = orbit_c2w(batch["elevation"], batch["azimuth"], batch["camera_distances"])
    assert torch.allclose(c2w, batch["c2w"], atol=1e-5)
    rays_o, rays_d = camera_rays(c2w, batch["fovy"], 12, 12)
    assert torch.allclose(rays_o, batch["rays_o"], atol=1e-5)
    assert torch.allclose(torch.nn.functional.normalize(rays_d, dim=-1), batch["rays_d"], atol=1e-5)
    # unnormalised rays have unit length along the viewing direction: t is the view depth
    forward = -c2w[:, None, None, :3, 2]
    assert torch.allclose((rays_d * forward).sum(-1), torch.ones(5, 12, 12), atol=1e-5)


@pytest.mark.parametrize("key", list(OBJECTS))
def test_a_horizontally_flipped_view_is_the_view_from_the_mirrored_azimuth(key):
    a, b = render(key, 20, 35, size=32), render(key, 20, -35, size=32)
    assert torch.allclose(a["rgb"].flip(1), b["rgb"], atol=1e-5)
    assert torch.equal(a["alpha"].flip(1), b["alpha"])
