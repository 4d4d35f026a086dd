"""The type stubs (mqstore/_mqstore.pyi) match the compiled module: every
class, method, parameter and default, checked by mypy's stubtest."""

import os
import subprocess
import sys

import pytest


def test_stubs_match_the_extension(tmp_path):
    pytest.importorskip("mypy", reason="mypy is not installed (pip install mypy)")
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "mqstore"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # mypy writes its cache to the working directory
        env={**os.environ, "MYPY_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert result.returncode == 0, result.stdout + result.stderr
