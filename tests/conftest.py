"""Test-session setup: the suite writes only into temporary directories.

prefopt caches converted models and reference log-probs under ``$PREFOPT_CACHE`` (default
``~/.cache/prefopt``); the real SmolLM2 test alone writes a 517 MB converted checkpoint there. The
whole session therefore runs with ``PREFOPT_CACHE`` pointing at a fresh temporary folder (the real
conversion still runs once per session, into it), and at the end of the session the places a stray
write would land in (the user's real prefopt cache, ``outputs/`` and new top-level entries of the
working directory) are compared with a snapshot taken at the start: anything new fails the run.
Other programs may share the real cache while the suite runs (a second checkout's tests, a training
run), so a new path there counts only if this test process itself created or wrote under it (seen by
an audit hook on open-for-writing, mkdir, rename and copy).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# Tool caches that pytest and hypothesis keep in the working directory by design.
_TOOL_FOLDERS = {".pytest_cache", ".hypothesis", "__pycache__"}
_STATE: dict = {}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_WRITING_EVENTS = frozenset({"open", "os.mkdir", "os.rename", "shutil.copyfile", "shutil.copytree", "os.symlink"})
_WRITTEN: set[str] = set()  # paths under the real cache this process created or wrote


def _audit_writes(event: str, arguments: tuple) -> None:
    if event not in _WRITING_EVENTS:
        return
    if event == "open":
        path, mode, flags = arguments
        if not (mode and any(c in mode for c in "wax+")) and not (mode is None and flags & _WRITE_FLAGS):
            return
        paths = (path,)
    elif event in ("os.rename", "shutil.copyfile", "shutil.copytree", "os.symlink"):
        paths = (arguments[1],)
    else:
        paths = (arguments[0],)
    root = _STATE.get("real_cache_text")
    for path in paths:
        if isinstance(path, (str, bytes, os.PathLike)):
            text = os.path.abspath(os.fsdecode(path))
            if root and (text == root or text.startswith(root + os.sep)):
                _WRITTEN.add(text)


def _files_under(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {str(path) for path in folder.rglob("*")}


def _snapshot(real_cache: Path, working_directory: Path) -> tuple[set[str], set[str]]:
    """(paths under the real cache, paths this session must not add in the working directory)."""
    top_level = {str(path) for path in working_directory.iterdir() if path.name not in _TOOL_FOLDERS}
    return _files_under(real_cache), _files_under(working_directory / "outputs") | top_level


def pytest_configure(config):
    # Before any test module is imported, so nothing can read the real cache location first.
    from prefopt._cache import cache_root

    real_cache = cache_root()
    temporary_cache = Path(tempfile.mkdtemp(prefix="prefopt-test-cache-"))
    _STATE.update(
        real_cache=real_cache,
        working_directory=Path.cwd(),
        temporary_cache=temporary_cache,
        real_cache_text=os.path.abspath(real_cache),
        previous_value=os.environ.get("PREFOPT_CACHE"),
        before=_snapshot(real_cache, Path.cwd()),
    )
    os.environ["PREFOPT_CACHE"] = str(temporary_cache)
    sys.addaudithook(_audit_writes)  # cannot be removed again; it returns at once when no real cache is set


def stray_files() -> list[str]:
    """Files or folders this session added outside temporary directories."""
    cache_before, working_before = _STATE["before"]
    cache_now, working_now = _snapshot(_STATE["real_cache"], _STATE["working_directory"])
    written = tuple(_WRITTEN)
    ours = {
        path for path in cache_now - cache_before
        if any(path == w or path.startswith(w + os.sep) or w.startswith(path + os.sep) for w in written)
    }
    return sorted(ours | (working_now - working_before))


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
    _STATE["real_cache_text"] = None
    if _STATE["previous_value"] is None:
        os.environ.pop("PREFOPT_CACHE", None)
    else:
        os.environ["PREFOPT_CACHE"] = _STATE["previous_value"]
    shutil.rmtree(_STATE["temporary_cache"], ignore_errors=True)
