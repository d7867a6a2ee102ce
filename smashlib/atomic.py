"""Write a folder so that, whatever happens midway, its path holds either the old folder or the new one.

``save_pretrained`` writes a model folder with this. The new content goes into a staging folder beside
the target (same filesystem, so renames are atomic), is flushed to disk, and then takes the target's
place. On Linux the two folders are swapped in one atomic ``renameat2(RENAME_EXCHANGE)`` call, so the
target path never stops pointing at a complete folder. Where that call is missing (other systems,
filesystems that refuse it), the old folder is renamed aside and the new one renamed in; a process
killed between those two renames leaves the old folder aside, and :func:`readable_folder` and the next
save find it there. Staging and aside folders carry the writer's process id, so leftovers of a killed
writer are recognised and removed by the next save, never those of a writer still running.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from smashlib.errors import SmashError

STAGING_TAG = "smashlib-staging"
ASIDE_TAG = "smashlib-previous"
_RENAME_EXCHANGE = 2  # from linux/fs.h
_AT_FDCWD = -100


def _leftover_pattern(target: Path, tag: str) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(target.name)}\.{tag}-(\d+)-")


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _leftovers(target: Path, tag: str) -> list[Path]:
    """Sibling folders a killed writer left for ``target`` (their process is gone), newest first."""
    if not target.parent.is_dir():
        return []
    pattern = _leftover_pattern(target, tag)
    found = []
    for entry in target.parent.iterdir():
        match = pattern.match(entry.name)
        if match and entry.is_dir() and not _process_alive(int(match.group(1))):
            found.append(entry)
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def readable_folder(target: str | os.PathLike) -> Path:
    """``target``, or, if a save was killed between its two fallback renames, the previous folder set aside."""
    target = Path(target)
    if not target.exists():
        aside = _leftovers(target.absolute(), ASIDE_TAG)
        if aside:
            return aside[0]
    return target


def _finish_interrupted(target: Path) -> None:
    """Put back a folder set aside by a killed save, then drop every leftover of killed saves."""
    if not target.exists():
        aside = _leftovers(target, ASIDE_TAG)
        if aside:
            os.rename(aside[0], target)
    for leftover in _leftovers(target, STAGING_TAG) + _leftovers(target, ASIDE_TAG):
        shutil.rmtree(leftover, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default_folder_mode() -> int:
    return 0o777 & ~_umask()


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder``, then the folders themselves (their entries), to the disk."""
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
    for root, _, _ in os.walk(folder, topdown=False):
        _fsync_dir(Path(root))


def _fsync_dir(folder: Path) -> None:
    if os.name == "nt":  # folders cannot be opened for fsync on Windows; NTFS journals renames itself
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _exchange_function() -> Callable[[Path, Path], bool] | None:
    """Linux's atomic swap of two paths, or None where the C library lacks it."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None

    def exchange(a: Path, b: Path) -> bool:
        if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
            return True
        error = ctypes.get_errno()
        if error in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this filesystem or kernel cannot swap
            return False
        raise OSError(error, os.strerror(error), str(b))

    return exchange


exchange_paths = _exchange_function()


def _replace_with_renames(staging: Path, target: Path) -> None:
    """The portable fallback: old folder aside, new folder in, old folder removed."""
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.{ASIDE_TAG}-{os.getpid()}-", dir=target.parent))
    os.rmdir(aside)  # mkdtemp reserved a unique name; rename needs it free
    os.rename(target, aside)
    os.rename(staging, target)
    _fsync_dir(target.parent)
    shutil.rmtree(aside, ignore_errors=True)


def swap_into_place(staging: Path, target: Path) -> None:
    """Make ``staging``'s content appear at ``target`` in one step; the old content ends up in ``staging``."""
    if not target.exists():
        os.rename(staging, target)
    elif exchange_paths is None or not exchange_paths(staging, target):
        _replace_with_renames(staging, target)
    _fsync_dir(target.parent)


def _check_replaceable(target: Path, check_replaceable: Callable[[Path], None]) -> None:
    if target.exists() and not target.is_dir():
        raise SmashError(f"cannot save to {target}: it is a file, not a folder. Choose a folder path.")
    if target.is_dir() and any(target.iterdir()):
        check_replaceable(target)


def _give_default_modes(folder: Path) -> None:
    """Files as ``open()`` would create them (0644 under the usual umask): some writers (safetensors) make
    theirs private (0600), but a saved model is not a private file."""
    mode = 0o666 & ~_umask()
    for root, _, files in os.walk(folder):
        for name in files:
            os.chmod(os.path.join(root, name), mode)


def _refuse_every_folder(target: Path) -> None:
    raise SmashError(f"cannot save to {target}: the folder holds other files. Choose a new or empty folder.")


@contextlib.contextmanager
def atomic_folder(
    target: str | os.PathLike, check_replaceable: Callable[[Path], None] = _refuse_every_folder
) -> Iterator[Path]:
    """Yield an empty staging folder; when the block ends without error, it replaces ``target`` atomically.

    ``check_replaceable(folder)`` raises when an existing, non-empty ``target`` may not be replaced (a
    folder holding anything the writer did not write is refused rather than deleted). If the block
    raises, ``target`` is left as it was. A ``target`` that is a symbolic link to a folder stays a link:
    the folder it points to is the one replaced.
    """
    target = Path(target).absolute()
    if target.is_symlink():
        target = target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    _finish_interrupted(target)
    _check_replaceable(target, check_replaceable)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.{STAGING_TAG}-{os.getpid()}-", dir=target.parent))
    try:
        os.chmod(staging, _default_folder_mode())  # mkdtemp makes it private (0700); a saved model is not
        yield staging
        _give_default_modes(staging)
        fsync_tree(staging)
        swap_into_place(staging, target)
    finally:
        # after a swap, staging holds the previous folder; after an error, the partial new one
        shutil.rmtree(staging, ignore_errors=True)
