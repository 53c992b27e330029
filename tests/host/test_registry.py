"""The host registry: register / find semantics of threestudio, with helpful errors."""
import pytest

from threestudio_lucid import compat
from threestudio_lucid.host import UnknownModuleError, __version__, find, register
from threestudio_lucid.errors import ConfigError


def test_compat_uses_the_bundled_host_without_threestudio():
    assert not compat.USING_REAL_THREESTUDIO
    assert compat.threestudio.__name__ == "threestudio_lucid.host"
    assert compat.THREESTUDIO_VERSION == __version__ == "0.2.3"


def test_duplicate_name_raises_the_threestudio_error():
    @register("test-registry-dup")
    class A:
        pass

    with pytest.raises(ValueError, match="Module test-registry-dup already exists! Names of extensions conflict!"):

        @register("test-registry-dup")
        class B:
            pass


def test_find_unknown_name_lists_registered_names():
    with pytest.raises(KeyError) as exc:
        find("no-such-thing")
    assert isinstance(exc.value, UnknownModuleError) and isinstance(exc.value, ConfigError)
    msg = str(exc.value)
    assert "no-such-thing" in msg
    assert "random-camera-datamodule" in msg and "stable-diffusion-prompt-processor" in msg


def test_find_with_mixins_puts_subs_before_main():
    @register("test-main")
    class Main:
        def who(self):
            return "main"

    @register("test-mixin")
    class Mixin:
        def who(self):
            return "mixin"

    cls = find("test-main:test-mixin")
    assert cls.__mro__[1:3] == (Mixin, Main)
    assert cls().who() == "mixin"
    assert cls.__name__ == "test-main.test-mixin"


def test_logging_helpers_exist(caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="pytorch_lightning"):
        compat.info("hello info")
        compat.warn("hello warn")
    assert "hello info" in caplog.text and "hello warn" in caplog.text
