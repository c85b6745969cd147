"""Writing results safely: never lose a user's data, never leave half a result.

Rules every command follows (issue: "never lose a user's data"):

- **All or nothing.** A run writes into a hidden temporary folder and moves its files into place only when
  every file is written; on any error (Ctrl-C included) the temporary folder is removed.
- **Only our own files.** A folder written by neuros-cv holds a marker, :data:`MARKER`, listing the files the
  command wrote. ``overwrite=True`` replaces exactly those files; anything else in the folder is left alone,
  and a folder that neuros-cv did not write (no marker) is never replaced: the call is refused.
- **Never an input.** An output that is, contains or lies inside one of the command's inputs is refused.
- **Readable by colleagues.** Files and folders get the permissions the user's umask gives (temporary files
  are created 0600/0700 by :mod:`tempfile`; they are widened before they appear).
- **A full disk says so**, naming the output path, rather than a bare "N requested and M written".
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "MARKER",
    "OutputExistsError",
    "atomic_output_dir",
    "atomic_output_file",
    "atomic_write_text",
    "check_not_input",
    "check_output_dir",
    "check_output_file",
    "disk_full_error",
    "dumps_json",
    "honour_umask",
    "is_disk_full",
    "owned_files",
]

#: Name of the marker file that says "neuros-cv wrote this folder" and lists the files it wrote.
MARKER = ".neuros-cv-output.json"
MARKER_SCHEMA = "neuros-cv/output-manifest/1"

PathLike = str | os.PathLike[str]


class OutputExistsError(FileExistsError):
    """The output exists and may not be replaced (not asked to, or not written by neuros-cv)."""


def dumps_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys are *not* used, to keep the schema's order; floats as repr."""
    return json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _resolve(path: PathLike) -> Path:
    """Absolute, symlink-free path: ``.`` becomes the current folder's real name (it has a parent and a name)."""
    return Path(path).expanduser().resolve()


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back (the value is process-wide).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(root: PathLike) -> None:
    """Give ``root`` and everything below it the permissions a plain ``open``/``mkdir`` would have given."""
    root = Path(root)
    mask = _umask()
    dir_mode, file_mode = 0o777 & ~mask, 0o666 & ~mask
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    for p in paths:
        if p.is_symlink():
            continue
        with contextlib.suppress(OSError):
            mode = p.stat().st_mode
            if p.is_dir():
                os.chmod(p, (mode & 0o7777) | dir_mode)
            elif mode & 0o077 == 0:  # a mkstemp/mkdtemp file (0600): widen to the umask; keep any x bit
                os.chmod(p, file_mode | (mode & 0o100 and 0o111 & ~mask))


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` says the disk (or the quota) is full, including numpy's errno-less short-write error."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # numpy's ndarray.tofile (used by tifffile) raises OSError("N requested and M written") with no errno.
    text = str(e)
    return isinstance(e, OSError) and "requested and" in text and "written" in text


def disk_full_error(target: Path) -> OSError:
    """A one-line ENOSPC error naming ``target`` and the space left."""
    where = target if target.exists() else target.parent
    try:
        free = shutil.disk_usage(where).free
        free_txt = f" ({free / 2**20:.1f} MiB free)"
    except OSError:
        free_txt = ""
    err = OSError(f"disk full while writing {target}{free_txt}: nothing was written; free some space or choose "
                  "an output on another disk")
    err.errno = errno.ENOSPC  # set after construction so that str(err) stays one plain sentence
    return err


def check_not_input(out: PathLike, inputs: Iterable[PathLike] = ()) -> Path:
    """Refuse an output that is, contains or lies inside one of ``inputs``.

    Parameters
    ----------
    out : path
        The output file or folder.
    inputs : iterable of paths
        Files or folders the command reads; paths that do not exist are ignored.

    Returns
    -------
    pathlib.Path
        ``out`` resolved.

    Raises
    ------
    ValueError
        One line naming the input and how ``out`` relates to it.
    """
    path = _resolve(out)
    for item in inputs:
        if item is None:
            continue
        src = _resolve(item)
        if path == src:
            relation = "is"
        elif path in src.parents:
            relation = "contains"
        elif src in path.parents:
            relation = "is inside"
        else:
            continue
        raise ValueError(f"output {path} {relation} the input {src}; write the output somewhere else")
    return path


def _manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest neuros-cv left in ``folder``: the marker file, or for a zarr group its ``zarr.json``."""
    marker = folder / MARKER
    try:
        if marker.is_file():
            doc = json.loads(marker.read_text(encoding="utf-8"))
        elif (folder / "zarr.json").is_file():
            attrs = json.loads((folder / "zarr.json").read_text(encoding="utf-8")).get("attributes", {})
            doc = attrs.get("neuros_cv", {}).get("output")
        else:
            return None
    except (OSError, ValueError, AttributeError):
        return None
    return doc if isinstance(doc, dict) and doc.get("schema") == MARKER_SCHEMA else None


def owned_files(folder: PathLike) -> list[str] | None:
    """The names neuros-cv wrote into ``folder`` (from its manifest), or None if it has no valid manifest.

    The manifest is the file :data:`MARKER`; in a zarr group (whose readers warn about unknown files) it is the
    ``neuros_cv.output`` attribute of the group's ``zarr.json``.
    """
    doc = _manifest(Path(folder))
    files = doc.get("files") if doc else None
    if not isinstance(files, list):
        return None
    # Only plain names directly inside the folder: a manifest can never point outside it.
    return [f for f in files if isinstance(f, str) and f and "/" not in f and "\\" not in f and f not in (".", "..")]


def check_output_dir(out: PathLike, overwrite: bool = False, inputs: Iterable[PathLike] = ()) -> Path:
    """Fail early (before any computation) if the folder ``out`` cannot be written or would destroy data.

    Parameters
    ----------
    out : path
        The output folder; created if missing.
    overwrite : bool
        Allow replacing the files a previous neuros-cv run wrote into ``out`` (never anything else).
    inputs : iterable of paths
        The command's inputs; ``out`` may not be, contain or lie inside any of them.

    Returns
    -------
    pathlib.Path
        ``out`` resolved to an absolute path.
    """
    path = check_not_input(out, inputs)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"out={path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"out={path} exists and is not empty; pass overwrite=True to replace what "
                                    "neuros-cv wrote there, or choose a new folder")
        if owned_files(path) is None:
            raise OutputExistsError(f"out={path} holds files that neuros-cv did not write (no {MARKER}); "
                                    "refusing to replace them: choose a new or empty folder")
    parent = path.parent
    for p in (parent, *parent.parents):
        if p.exists():
            if not p.is_dir():
                raise NotADirectoryError(f"cannot create out={path}: {p} is a file, not a folder")
            break
    probe_dir = path if path.is_dir() else parent
    try:
        probe_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".neuros-cv-probe-", dir=probe_dir):
            pass
    except OSError as e:
        raise PermissionError(f"cannot write to out={path}: {e.strerror or e}") from None
    return path


def _write_marker(folder: Path, files: list[str], command: str | None) -> None:
    from . import __version__

    doc = {
        "schema": MARKER_SCHEMA,
        "tool": "neuros-cv",
        "version": __version__,
        "command": command,
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "files": sorted(files),
        "note": "neuros-cv wrote the files listed here; --overwrite replaces only these. Anything else in this "
        "folder is left alone.",
    }
    zarr_json = folder / "zarr.json"
    if zarr_json.is_file():  # a zarr group: keep the manifest in its attributes (no stray file for zarr to warn on)
        group = json.loads(zarr_json.read_text(encoding="utf-8"))
        group.setdefault("attributes", {}).setdefault("neuros_cv", {})["output"] = doc
        target, text = zarr_json, json.dumps(group, indent=2)
    else:
        target, text = folder / MARKER, dumps_json(doc)
    tmp = folder / f".{target.name}.tmp-{os.getpid()}"
    tmp.write_text(text, encoding="utf-8")
    honour_umask(tmp)
    os.replace(tmp, target)


def _commit(tmp: Path, path: Path, command: str | None) -> None:
    """Move the finished files of ``tmp`` into ``path``, replacing only files a previous run listed."""
    new = sorted(p.name for p in tmp.iterdir())
    if not path.exists():
        _write_marker(tmp, new, command)
        honour_umask(tmp)
        tmp.rename(path)
        return
    old = owned_files(path) or []
    present = {p.name for p in path.iterdir()}
    foreign = sorted(n for n in new if n in present and n not in old and n != MARKER)
    if foreign:
        raise OutputExistsError(f"out={path}: {foreign[0]} exists and neuros-cv did not write it; "
                                "refusing to replace it: choose a new folder")
    honour_umask(tmp)
    trash = Path(tempfile.mkdtemp(prefix=".neuros-cv-old-", dir=path))
    moved_old: list[str] = []
    moved_new: list[str] = []
    try:
        for name in old:
            if (path / name).exists() or (path / name).is_symlink():
                (path / name).rename(trash / name)
                moved_old.append(name)
        for name in new:
            (tmp / name).rename(path / name)
            moved_new.append(name)
        _write_marker(path, new, command)
    except BaseException:
        # Put everything back as it was: the previous run's files return, the new ones go.
        for name in moved_new:
            with contextlib.suppress(OSError):
                (path / name).rename(tmp / name)
        for name in moved_old:
            with contextlib.suppress(OSError):
                (trash / name).rename(path / name)
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_dir(
    out: PathLike, overwrite: bool = False, inputs: Iterable[PathLike] = (), command: str | None = None
) -> Iterator[Path]:
    """Yield a temporary folder; on success its files appear in ``out``, on any failure nothing changes.

    Parameters
    ----------
    out : path
        The output folder (see :func:`check_output_dir` for what is refused).
    overwrite : bool
        Replace the files a previous neuros-cv run listed in ``out``'s marker; other files stay.
    inputs : iterable of paths
        The command's inputs, which ``out`` may not be, contain or lie inside.
    command : str, optional
        Recorded in the marker (e.g. ``"features"``).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_output_dir(root / "res") as tmp:
    ...     _ = (tmp / "a.txt").write_text("hello")
    >>> sorted(p.name for p in (root / "res").iterdir())
    ['.neuros-cv-output.json', 'a.txt']
    """
    inputs = list(inputs)
    path = check_output_dir(out, overwrite, inputs)
    # Beside `out` when it does not exist yet (one rename puts the whole folder in place), else inside it (the
    # files move within one file system, and the parent need not be writable).
    base = path if path.is_dir() else path.parent
    tmp = Path(tempfile.mkdtemp(prefix=".neuros-cv-tmp-", dir=base))
    try:
        yield tmp
        _commit(tmp, path, command)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):
            raise disk_full_error(path) from None
        raise
    finally:
        if tmp.exists() and tmp != path:
            shutil.rmtree(tmp, ignore_errors=True)


def check_output_file(out: PathLike, overwrite: bool = False, inputs: Iterable[PathLike] = ()) -> Path:
    """Fail early if the file ``out`` exists (unless ``overwrite``), is an input, or its folder is not writable."""
    path = check_not_input(out, inputs)
    if path.is_dir():
        raise IsADirectoryError(f"out={path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"out={path} exists; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"out={path}: folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise PermissionError(f"out={path}: cannot write to folder {path.parent}")
    return path


@contextlib.contextmanager
def atomic_output_file(out: PathLike, overwrite: bool = False, inputs: Iterable[PathLike] = ()) -> Iterator[Path]:
    """Yield a temporary file path beside ``out``; renamed into place on success, removed on any failure."""
    path = check_output_file(out, overwrite, inputs)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        honour_umask(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if is_disk_full(e):
            raise disk_full_error(path) from None
        raise


def atomic_write_text(out: PathLike, text: str, overwrite: bool = False, inputs: Iterable[PathLike] = ()) -> Path:
    """Write ``text`` to a temporary file beside ``out`` and rename it into place (never half a file)."""
    with atomic_output_file(out, overwrite, inputs) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return _resolve(out)
