"""Under threestudio's own launch.py the plugin's errors end the launch with one line (errors.py)."""
import os
import subprocess
import sys

import pytest

from threestudio_lucid import errors

PLUGIN = os.path.dirname(errors.__file__)

# errors.py and atomic_files.py are standard library only: loaded from a bare package (the plugin's
# __init__ imports every component, seconds per process)
SCRIPT = """
import sys, types
package = types.ModuleType("plugin")
package.__path__ = [{folder!r}]
sys.modules["plugin"] = package
import plugin.errors as errors
errors.install_launch_excepthook()
errors.install_launch_excepthook()  # the plugin may be imported twice: one hook
raise {raise_}
"""


@pytest.mark.parametrize("raise_, one_line", [
    ("errors.ConfigError('system.depth_map=\\'bad\\' must be one of depth, disparity.')", True),
    ("errors.StorageError('No space left on device writing x')", True),
    ("errors.NonFiniteError('training diverged at step 3')", True),
    ("RuntimeError('a bug')", False),
    # a logger failing on the same full disk while the run stops: the plugin's line, not the logger's traceback
    ("OSError(28, 'No space left on device') from errors.StorageError('No space left on device writing x')", True),
    # Lightning's CSV logger meeting the full disk first
    ("OSError(28, 'No space left on device', 'outputs/run/csv_logs/version_0/metrics.csv')", True),
    ("OSError(2, 'No such file or directory', 'x')", False),
])
def test_the_plugins_errors_are_one_line_under_a_launch_py(tmp_path, raise_, one_line):
    script = tmp_path / "launch.py"
    script.write_text(SCRIPT.format(folder=PLUGIN, raise_=raise_))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    if one_line:
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
        assert "Traceback" not in proc.stderr
    else:
        assert "Traceback" in proc.stderr


def test_other_programs_keep_their_tracebacks(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(folder=PLUGIN, raise_="errors.ConfigError('x')"))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert "Traceback" in proc.stderr
