"""A small toy world (two objects, few views, 32 px) built once per session, with its render cache
in a temporary folder (``LUCID_TOY_WORLD_CACHE``), so loads anywhere in the session reuse it."""

import pytest

SMALL_WORLD = dict(
    objects=["cube", "penguin"],
    image_size=32,
    downsample=2,
    bandwidth=0.1,
    n_azimuths=8,
    elevations_deg=[0.0, 30.0, 70.0],
    camera_distances=[4.0],
    fovy_deg=35.0,
    n_eval_views=4,
)


@pytest.fixture(scope="session")
def toy_cache_dir(tmp_path_factory):
    from threestudio_lucid.toy_world.pipeline import CACHE_ENV

    path = str(tmp_path_factory.mktemp("toy-world-cache"))
    with pytest.MonkeyPatch.context() as patch:  # session-wide: the fixture cannot take monkeypatch
        patch.setenv(CACHE_ENV, path)
        yield path


@pytest.fixture(scope="session")
def toy_world_path(tmp_path_factory, toy_cache_dir):
    """Folder of a small toy world (see ``SMALL_WORLD``), with the randomly initialised estimator (no pretraining:
    the pretrained one has its own tests, test_estimator_pretraining.py, and would add seconds to every session)."""
    from threestudio_lucid.toy_world.pipeline import build_toy_world

    return build_toy_world(tmp_path_factory.mktemp("toy-world") / "world", cache_dir=toy_cache_dir, estimator_steps=0,
                           **SMALL_WORLD)


@pytest.fixture(scope="session")
def toy_pipe(toy_world_path):
    """The loaded pipeline-like object of the small toy world (fp32)."""
    from threestudio_lucid.toy_world.pipeline import load_toy_world_pipeline

    return load_toy_world_pipeline(toy_world_path)
