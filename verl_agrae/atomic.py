"""Atomic writes: a reader (or a rerun after a crash) sees the old content or the new one, never a torn file.

Everything is first written to a temporary name in the destination's own directory and then moved into
place with :func:`os.replace`. Same directory means same filesystem, and a rename within one filesystem
is atomic on POSIX (and on Windows for files), whereas a temporary file in ``/tmp`` could sit on another
filesystem, where a "move" is a copy that can be interrupted halfway.

Temporary names are ``.<name>.<random>.tmp``: hidden, and recognisable by cleaners of partial outputs
(e.g. :func:`verl_agrae.eval.shards.clean_partial`). A temporary file is created with the permissions a
plain ``open(path, "w")`` would give (the umask applies), so an atomic write does not change who can
read the result.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_target", "atomic_write_bytes", "atomic_write_text"]

#: Suffix of every temporary name (what partial-output cleaners look for).
TMP_SUFFIX = ".tmp"


def _reserve(dest: Path, directory: bool) -> Path:
    """Create an empty temporary file (or directory) next to ``dest`` and return its path.

    The name is reserved with ``O_EXCL`` / ``mkdir`` so concurrent writers of the same destination never
    share a temporary; mode 0o666 / 0o777 lets the umask decide permissions, as for an ordinary file.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")
        try:
            if directory:
                os.mkdir(tmp, 0o777)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"could not reserve a temporary name next to {dest}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_target(path: str | os.PathLike[str], *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block completes.

    For writers that take a path rather than bytes (``pyarrow.parquet.write_table``, ``fig.savefig``,
    ``torch.save``, ``save_pretrained``). Parent directories of ``path`` are created. If the block raises,
    the temporary is removed and ``path`` is left exactly as it was.

    Args:
        path: final destination.
        directory: the block fills a directory instead of a file. An existing directory at ``path`` is
            deleted just before the new one is moved in (``os.replace`` cannot replace a non-empty
            directory), so only the final rename, not the swap as a whole, is atomic: callers must treat
            an absent directory as "not written yet".

    Yields:
        The temporary path: an existing empty file (or directory), on the same filesystem as ``path``.
        Writers that infer a format from the file extension must be told the format explicitly, since
        the temporary name ends in ``.tmp``.
    """
    dest = Path(path)
    tmp = _reserve(dest, directory)
    try:
        yield tmp
        if directory and dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        _remove(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring); parent directories are created.

    The data is flushed and fsynced before the rename, so after a power loss the file holds either the
    old or the new content, not a renamed empty file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    dest = Path(path)
    with atomic_target(dest) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return dest


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`); parent directories are created.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    dest = Path(path)
    with atomic_target(dest) as tmp, open(tmp, "w", encoding=encoding) as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    return dest
