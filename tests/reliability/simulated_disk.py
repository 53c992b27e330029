"""A disk that fills up, in this process: every file the plugin writes (they all go through
``atomic_files``) lands byte by byte until ``free`` bytes are used, then its write fails with ENOSPC as
a real one does (the bytes before it are on disk); the free space reported is what is left. The real
thing (a tiny tmpfs) is in test_full_disk.py where the machine allows it."""
import builtins
import errno

from threestudio_lucid import atomic_files


class SimulatedDisk:
    def __init__(self, monkeypatch, free: int):
        self.free = free
        self.failures = 0
        disk = self
        real_open = builtins.open

        class FillingFile:
            def __init__(self, f):
                self.f = f

            def write(self, data):
                data = memoryview(data).cast("B")
                n = min(len(data), max(disk.free, 0))
                self.f.write(data[:n])
                disk.free -= n
                if n < len(data):
                    self.f.flush()
                    disk.failures += 1
                    raise OSError(errno.ENOSPC, "No space left on device")
                return n

            def __getattr__(self, name):
                return getattr(self.f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

        def filling_open(path, mode="r", *args, **kwargs):
            f = real_open(path, mode, *args, **kwargs)
            return FillingFile(f) if any(c in mode for c in "wax") else f

        monkeypatch.setattr(atomic_files, "open", filling_open, raising=False)
        monkeypatch.setattr(atomic_files, "free_space", lambda folder: max(disk.free, 0))
