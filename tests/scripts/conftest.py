"""Shared by the scripts' tests: one tiny toy world (32 px: a blue ball in a striped and a checkered variant, and a
plain penguin; exact prior), built once per session with its render cache in a temporary folder."""
import pytest

TINY_CLAIMS_WORLD = dict(objects=["ball", "penguin"], variants=["ball:striped", "ball:checkered"], image_size=32,
                         downsample=2, bandwidth=0.2, n_azimuths=4, elevations_deg=[0.0, 15.0], camera_distances=[4.0],
                         fovy_deg=35.0, n_eval_views=3)


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    from threestudio_lucid.toy_world.pipeline import CACHE_ENV, build_toy_world

    with pytest.MonkeyPatch.context() as patch:  # the world's renders load from this cache while the session runs
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("toy-cache")))
        yield build_toy_world(tmp_path_factory.mktemp("world") / "penguins", **TINY_CLAIMS_WORLD)
