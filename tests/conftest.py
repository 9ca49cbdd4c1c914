"""Test-session setup: the suite writes only into temporary directories.

prefopt caches converted models and reference log-probs under ``$PREFOPT_CACHE`` (default
``~/.cache/prefopt``); the real SmolLM2 test alone writes a 517 MB converted checkpoint there. The
whole session therefore runs with ``PREFOPT_CACHE`` pointing at a fresh temporary folder (the real
conversion still runs once per session, into it), and at the end of the session the places a stray
write would land in (the user's real prefopt cache, ``outputs/`` and new top-level entries of the
working directory) are compared with a snapshot taken at the start: anything new fails the run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Tool caches that pytest and hypothesis keep in the working directory by design.
_TOOL_FOLDERS = {".pytest_cache", ".hypothesis", "__pycache__"}
_STATE: dict = {}


def _files_under(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {str(path) for path in folder.rglob("*")}


def _snapshot(real_cache: Path, working_directory: Path) -> set[str]:
    top_level = {str(path) for path in working_directory.iterdir() if path.name not in _TOOL_FOLDERS}
    return _files_under(real_cache) | _files_under(working_directory / "outputs") | top_level


def pytest_configure(config):
    # Before any test module is imported, so nothing can read the real cache location first.
    from prefopt._cache import cache_root

    real_cache = cache_root()
    temporary_cache = Path(tempfile.mkdtemp(prefix="prefopt-test-cache-"))
    _STATE.update(
        real_cache=real_cache,
        working_directory=Path.cwd(),
        temporary_cache=temporary_cache,
        previous_value=os.environ.get("PREFOPT_CACHE"),
        before=_snapshot(real_cache, Path.cwd()),
    )
    os.environ["PREFOPT_CACHE"] = str(temporary_cache)


def stray_files() -> list[str]:
    """Files or folders that appeared outside temporary directories since the session started."""
    return sorted(_snapshot(_STATE["real_cache"], _STATE["working_directory"]) - _STATE["before"])


def pytest_sessionfinish(session, exitstatus):
    stray = stray_files()
    if stray:
        shown = "\n  ".join(stray[:20]) + (f"\n  ... and {len(stray) - 20} more" if len(stray) > 20 else "")
        session.config.stash[_STRAY_KEY] = shown
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_STRAY_KEY = pytest.StashKey[str]()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    shown = config.stash.get(_STRAY_KEY, None)
    if shown:
        terminalreporter.write_sep("=", "files written outside temporary directories", red=True)
        terminalreporter.write_line(
            "the test session wrote these (tests must write under tmp_path; PREFOPT_CACHE is a temporary "
            f"folder during tests):\n  {shown}"
        )


def pytest_unconfigure(config):
    if "temporary_cache" not in _STATE:
        return
    if _STATE["previous_value"] is None:
        os.environ.pop("PREFOPT_CACHE", None)
    else:
        os.environ["PREFOPT_CACHE"] = _STATE["previous_value"]
    shutil.rmtree(_STATE["temporary_cache"], ignore_errors=True)
