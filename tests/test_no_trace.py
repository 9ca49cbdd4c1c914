"""The suite leaves no trace outside temporary directories (the checks themselves live in conftest.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import conftest
from prefopt._cache import cache_root


def test_prefopt_cache_is_a_temporary_folder_during_tests():
    root = cache_root().resolve()
    assert root.is_relative_to(Path(tempfile.gettempdir()).resolve()), root
    assert root != conftest._STATE["real_cache"].resolve()


def test_a_stray_file_is_reported(tmp_path, monkeypatch):
    real_cache, working_directory = tmp_path / "home-cache", tmp_path / "cwd"
    (real_cache / "models").mkdir(parents=True)
    working_directory.mkdir()
    monkeypatch.setitem(conftest._STATE, "real_cache", real_cache)
    monkeypatch.setitem(conftest._STATE, "real_cache_text", str(real_cache))
    monkeypatch.setitem(conftest._STATE, "working_directory", working_directory)
    monkeypatch.setitem(conftest._STATE, "before", conftest._snapshot(real_cache, working_directory))
    monkeypatch.setattr(conftest, "_WRITTEN", set())
    assert conftest.stray_files() == []

    (real_cache / "models" / "converted").mkdir()  # this process: seen by the audit hook
    (real_cache / "models" / "converted" / "config.json").write_text("{}")
    (working_directory / "outputs" / "run").mkdir(parents=True)
    (working_directory / ".pytest_cache").mkdir()  # a tool cache, not a stray write
    assert set(conftest.stray_files()) == {
        str(real_cache / "models" / "converted"),
        str(real_cache / "models" / "converted" / "config.json"),
        str(working_directory / "outputs"),
        str(working_directory / "outputs" / "run"),
    }


def test_another_programs_writes_to_the_shared_cache_are_not_blamed_on_the_suite(tmp_path, monkeypatch):
    real_cache = tmp_path / "home-cache"
    real_cache.mkdir()
    monkeypatch.setitem(conftest._STATE, "real_cache", real_cache)
    monkeypatch.setitem(conftest._STATE, "real_cache_text", str(real_cache))
    monkeypatch.setitem(conftest._STATE, "working_directory", tmp_path)
    monkeypatch.setitem(conftest._STATE, "before", conftest._snapshot(real_cache, tmp_path))
    monkeypatch.setattr(conftest, "_WRITTEN", set())
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", f"import os; os.makedirs({str(real_cache / 'models' / 'other')!r})"], check=True)
    assert conftest.stray_files() == []
