"""Safe checkpoint files: atomic writes with a stored checksum, and loading that never runs code.

Writing (:func:`save_checkpoint`, :func:`atomic_write_bytes`): the bytes go to a temporary file in the same folder
(created with the umask's permissions, like any other file of the run), are flushed and ``fsync``-ed, and replace the
target with one ``os.replace`` (then the folder is ``fsync``-ed); a failed or interrupted write removes its temporary
file and leaves the previous checkpoint as it was. A process killed with ``kill -9`` in the middle of a write can
leave a ``.<name>.*.tmp`` file behind; :func:`remove_stale_temporaries` (called when a run folder is reused) cleans
them.

Format: a checkpoint is an ordinary ``torch.save`` archive (``torch.load(path, weights_only=True)`` reads it) whose
zip comment holds the SHA-256 of the archive, ``emphatic-rl-sha256:<64 hex digits>``. The checksum is inside the
file, so it is replaced in the same rename as the data it covers.

Loading (:func:`load_checkpoint`): the checksum is checked first (any changed byte, a truncated or an empty file is
refused), then the archive is unpickled with ``weights_only=True``: tensors, numbers, strings and plain containers
only, so a crafted file cannot run code. Every failure is one :class:`CheckpointError` line naming the file and what
is wrong with it. Archives without a checksum (written by ``torch.save`` directly) still load, with the same
``weights_only`` guard.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import pickle
import struct
import uuid
from pathlib import Path
from typing import Any

import torch

from emphatic_rl.config import ConfigError

CHECKSUM_PREFIX = b"emphatic-rl-sha256:"
_COMMENT_LENGTH = len(CHECKSUM_PREFIX) + 64
_EOCD_SIGNATURE = b"PK\x05\x06"
_ZIP_SIGNATURE = b"PK\x03\x04"  # a zip archive's first local file header (torch.save's format)
_EOCD_SIZE = 22  # the zip end-of-central-directory record without its comment


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used (missing, empty, truncated, corrupted, unsafe or of another run)."""


class RunInterrupted(Exception):
    """A run stopped by SIGINT / SIGTERM after writing its checkpoint (raised where a caller must stop too)."""

    def __init__(self, signal_name: str, message: str) -> None:
        super().__init__(message)
        self.signal_name = signal_name
        self.message = message


class DiskFullError(OSError):
    """The disk (or quota) holding a file the run writes is full."""


def _describe_os_error(error: OSError, path: Path, what: str) -> str:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"the disk holding {str(path.parent)!r} is full (no space left on device) while writing {what} "
                f"{str(path)!r}; free some space and resume")
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write {what} {str(path)!r}: the folder is read-only or not writable ({error.strerror})"
    return f"cannot write {what} {str(path)!r}: {error.strerror or error}"


def atomic_write_bytes(path: str | Path, data: bytes, what: str = "file") -> None:
    """Write ``data`` to ``path`` atomically: temporary file in the same folder, flush + fsync, ``os.replace``,
    fsync of the folder. On any failure the temporary file is removed and ``path`` keeps its old contents.

    Raises:
        DiskFullError: the disk is full (one line naming the folder); other ``OSError``s get a one-line message.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        # os.open with mode 0o666 lets the umask decide the permissions (mkstemp would make the file 0600)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(error, OSError) and not isinstance(error, DiskFullError):
            message = _describe_os_error(error, path, what)
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(error.errno, message) from None
            raise OSError(error.errno, message) from None
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not fsync folders
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the ``.<name>.*.tmp`` files that a killed write left in ``folder``; returns them."""
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for tmp in folder.glob(".*.tmp"):
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def checkpoint_bytes(obj: Any) -> bytes:
    """``obj`` serialised by ``torch.save``, with the archive's SHA-256 in its zip comment."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    if data[-_EOCD_SIZE:-_EOCD_SIZE + 4] != _EOCD_SIGNATURE or data[-2:] != b"\x00\x00":
        raise RuntimeError("torch.save wrote an archive without the expected zip end record")
    digest = hashlib.sha256(data).hexdigest().encode()
    return data[:-2] + struct.pack("<H", _COMMENT_LENGTH) + CHECKSUM_PREFIX + digest


def save_checkpoint(obj: Any, path: str | Path) -> None:
    """Save ``obj`` (tensors, numbers, strings, plain containers) to ``path`` atomically, with its checksum."""
    atomic_write_bytes(path, checkpoint_bytes(obj), what="checkpoint")


def split_checksum(data: bytes) -> tuple[bytes, str | None]:
    """``(archive as torch.save wrote it, stored hex digest)``, or ``(data, None)`` when there is no checksum."""
    end = len(data) - _COMMENT_LENGTH
    if end < _EOCD_SIZE or data[end:end + len(CHECKSUM_PREFIX)] != CHECKSUM_PREFIX:
        return data, None
    record = end - _EOCD_SIZE
    if data[record:record + 4] != _EOCD_SIGNATURE or struct.unpack("<H", data[end - 2:end])[0] != _COMMENT_LENGTH:
        return data, None
    return data[:end - 2] + b"\x00\x00", data[end + len(CHECKSUM_PREFIX):].decode("ascii", "replace")


def load_checkpoint(path: str | Path, map_location: Any = "cpu", require_checksum: bool = False) -> Any:
    """Load a checkpoint safely: checksum first, then ``torch.load(..., weights_only=True)``.

    Args:
        path: the checkpoint file.
        map_location: as ``torch.load``'s.
        require_checksum: refuse archives without a stored checksum (default: load them, unchecked).

    Raises:
        CheckpointError: one line naming the file: missing, empty, truncated or not a checkpoint, checksum mismatch,
            or holding objects that are not plain data (refused without running anything).
    """
    path = Path(path)
    name = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {name!r} does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint {name!r} is a folder, not a file") from None
    except OSError as error:
        raise CheckpointError(f"checkpoint {name!r} cannot be read: {error.strerror or error}") from None
    if not data:
        raise CheckpointError(f"checkpoint {name!r} is empty (0 bytes): it was cut off while being written")
    archive, digest = split_checksum(data)
    if digest is not None and hashlib.sha256(archive).hexdigest() != digest:
        raise CheckpointError(
            f"checkpoint {name!r} is corrupted: its bytes do not match the SHA-256 checksum stored in it"
        )
    if digest is None and _zip_end_is_cut(data):
        raise CheckpointError(f"checkpoint {name!r} is truncated: its zip end record announces more bytes than remain")
    if digest is None and require_checksum:
        raise CheckpointError(f"checkpoint {name!r} has no stored checksum (not written by emphatic-rl, or cut off)")
    if digest is None and not archive.startswith(_ZIP_SIGNATURE) and not _looks_like_a_pickle(archive):
        # neither a torch zip archive nor a (legacy) pickle stream: random or foreign bytes
        raise CheckpointError(f"checkpoint {name!r} is garbled or not a checkpoint (not a torch archive)")
    try:
        return torch.load(io.BytesIO(archive), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        text = str(error)
        if "global" in text.lower() or "reduce" in text.lower() or "build" in text.lower():
            raise CheckpointError(
                f"checkpoint {name!r} was refused: it holds objects other than tensors and plain data, and loading "
                "it could run code (nothing from it was executed)"
            ) from None
        raise CheckpointError(f"checkpoint {name!r} is garbled or not a checkpoint (not a torch archive)") from None
    except Exception as error:  # torch raises RuntimeError / EOFError / ValueError ... for broken archives
        if digest is None and not archive.startswith(_ZIP_SIGNATURE):
            raise CheckpointError(f"checkpoint {name!r} is garbled or not a checkpoint (not a torch archive)") from None
        if digest is None:
            raise CheckpointError(f"checkpoint {name!r} is truncated or not a checkpoint (not a readable torch "
                                  "archive)") from None
        raise CheckpointError(f"checkpoint {name!r} is unreadable: {_first_line(str(error))}") from None


def _looks_like_a_pickle(data: bytes) -> bool:
    """Whether ``data`` opens as a pickle stream of protocol 2 or later (torch's legacy, non-zip format and a plain
    ``pickle.dumps`` both do): the PROTO opcode followed by a protocol number."""
    return len(data) >= 2 and data[0] == pickle.PROTO[0] and 2 <= data[1] <= pickle.HIGHEST_PROTOCOL


def _zip_end_is_cut(data: bytes) -> bool:
    """Whether the last zip end record announces a longer comment than the bytes after it (a cut-off file, which
    torch's reader would still accept)."""
    record = data.rfind(_EOCD_SIGNATURE, max(0, len(data) - _EOCD_SIZE - 65535))
    if record < 0 or len(data) < record + _EOCD_SIZE:
        return False
    declared = struct.unpack("<H", data[record + 20:record + 22])[0]
    return declared != len(data) - record - _EOCD_SIZE


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "unknown error"
    return line if len(line) <= 200 else line[:197] + "..."


def require_keys(checkpoint: Any, keys: tuple[str, ...], path: str | Path) -> dict[str, Any]:
    """``checkpoint`` if it is a dict holding ``keys``, else one :class:`CheckpointError` naming the file."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} is not a run checkpoint (a {type(checkpoint).__name__})")
    missing = [k for k in keys if k not in checkpoint]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a run checkpoint: it lacks {', '.join(missing)}")
    return checkpoint


class GracefulStop:
    """Turn SIGINT / SIGTERM into a request to stop at the next safe point (a context manager).

    Inside the ``with`` block the first signal only sets :attr:`signal_name`; the training loop checks
    :attr:`requested` after each step, writes a checkpoint and returns. Outside the main thread (where Python cannot
    install handlers) it does nothing. The previous handlers come back on exit.
    """

    def __init__(self, signals: tuple[int, ...] | None = None) -> None:
        import signal

        self._signals = signals if signals is not None else (signal.SIGINT, signal.SIGTERM)
        self._previous: dict[int, Any] = {}
        self.signal_name: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame: Any) -> None:
        import signal

        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> GracefulStop:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for signum in self._signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        import signal

        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
