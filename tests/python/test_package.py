"""The installed package: ``python -m mqstore`` and ``mqstore.engines()``."""

import json
import subprocess
import sys

import mqstore


def run_module(*args):
    return subprocess.run(
        [sys.executable, "-m", "mqstore", *args], capture_output=True, text=True, timeout=60
    )


def test_engines_lists_the_build_and_their_capabilities():
    engines = mqstore.engines()
    # The default build has every engine the product knows.
    assert set(engines) == {"memory", "journal", "file", "rocksdb", "mysql", "redis", "s3", "hybrid"}
    assert engines["memory"]["durability"] == ["none"]
    assert engines["journal"]["pipelined"] is True
    assert engines["file"]["persistent"] is True
    assert engines["rocksdb"]["durability"] == ["none", "os", "fsync"]
    assert engines["rocksdb"]["transfer"] == "fetched"
    assert engines["s3"]["durability"] == ["none", "os", "fsync"]
    assert engines["s3"]["pipelined"] is True and engines["s3"]["persistent"] is True
    assert engines["hybrid"]["durability"] == ["none", "os", "fsync"]
    assert engines["hybrid"]["pipelined"] is True and engines["hybrid"]["persistent"] is True


def test_python_m_mqstore_prints_version_and_engines():
    result = run_module()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"mqstore {mqstore.__version__}"
    listed = [line.split()[0] for line in lines[2:]]
    assert listed == list(mqstore.engines())


def test_python_m_mqstore_json():
    result = run_module("--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data == {"version": mqstore.__version__, "engines": mqstore.engines()}


def test_python_m_mqstore_refuses_unknown_arguments():
    result = run_module("--bogus")
    assert result.returncode == 2
    assert "usage" in result.stderr
