"""A built wheel ships every module and data file of the source folders mapped into prefopt."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source folder -> package it is installed as (setup.cfg package_dir)
SOURCE_FOLDERS = {"prefopt": "prefopt", "losses": "prefopt/losses", "data": "prefopt/data"}
SHIPPED_SUFFIXES = {".py", ".jsonl", ".json", ".yaml"}


@pytest.mark.slow
def test_wheel_contains_every_source_and_data_file(tmp_path):
    # setuptools writes build/ and *.egg-info/ next to setup.cfg: build from a copy, not the checkout.
    source = tmp_path / "source"
    shutil.copytree(
        ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache")
    )
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("prefopt-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(["git", "ls-files", *SOURCE_FOLDERS], cwd=ROOT, capture_output=True, text=True, check=True)
    expected = set()
    for path in map(Path, tracked.stdout.split()):
        if path.suffix in SHIPPED_SUFFIXES:
            folder = path.parts[0]
            expected.add(str(Path(SOURCE_FOLDERS[folder], *path.parts[1:])))
    assert expected, "git ls-files found nothing"
    assert not expected - shipped, f"missing from the wheel: {sorted(expected - shipped)}"
