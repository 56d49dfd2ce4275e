"""The .npz/.npy files `xraysr upscale` reads and writes, a slice of rows at a time.

MedMNIST+'s ChestMNIST is the shape to expect: ``np.savez_compressed`` of ``train_images`` (78,468 × 64 × 64
uint8), ``val_images``, ``test_images`` and their ``*_labels``. ``np.load(...)[key]`` would read a whole member
at once, and its 256×256 answer is 16 times that; so an image array is read here a slice of rows at a time, from
just past its .npy header (a memory map for a .npy, the zip member's stream for a .npz, deflated or stored), and
the output is written member by member, the .npy header first and then the rows, so that memory is bounded by a
slice, not by the file. Every other member is copied as its stored bytes: nothing here ever unpickles.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np

ARRAY_SUFFIXES = (".npz", ".npy")
# What the Python API takes (Upscaler.check_image); any other dtype on an image-shaped array is refused.
IMAGE_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class Member:
    """One array of the file, from its .npy header alone; ``shape`` None for a member that is not a .npy."""

    key: str  # the name np.load gives it ("" for a .npy file)
    stored_name: str  # its name in the zip archive ("" for a .npy file)
    shape: tuple[int, ...] | None
    dtype: np.dtype | None
    fortran_order: bool = False

    def is_image_array(self, lr_size: int) -> bool:
        """An (N, lr, lr) stack or one (lr, lr) image, by shape: whether its dtype is usable is checked apart."""
        return self.shape is not None and len(self.shape) in (2, 3) and self.shape[-2:] == (lr_size, lr_size)

    @property
    def images(self) -> int:
        """How many images an image array holds: N of (N, lr, lr), 1 for one (lr, lr) image."""
        assert self.shape is not None
        return self.shape[0] if len(self.shape) == 3 else 1


def _read_header(handle: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the .npy at ``handle``, leaving it at the first byte of the data."""
    major, _ = np.lib.format.read_magic(handle)
    if major == 1:
        return np.lib.format.read_array_header_1_0(handle)
    if major == 2:
        return np.lib.format.read_array_header_2_0(handle)
    raise ValueError(f"a .npy format version {major} header (this reads versions 1 and 2)")


class ArrayFile:
    """An input .npz or .npy: its members in file order, and the rows of an image array on request.

    Reads of one member that move forward continue from the open stream (a deflated member cannot seek
    backwards without decompressing from its start again), so a worker that takes its shards in order reads
    each member once.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.is_npz = path.suffix.lower() == ".npz"
        self._streams: dict[str, tuple[BinaryIO, int]] = {}  # key → (stream, byte offset of its data)
        self._memmap: np.ndarray | None = None
        self._archive: zipfile.ZipFile | None = None
        self.members: list[Member] = []
        self.compressed = False
        if self.is_npz:
            self._archive = zipfile.ZipFile(path)
            for info in self._archive.infolist():
                self.compressed |= info.compress_type != zipfile.ZIP_STORED
                self.members.append(self._member(info))
        else:
            with path.open("rb") as handle:
                shape, fortran_order, dtype = _read_header(handle)
            self.members.append(Member("", "", shape, dtype, fortran_order))

    def _member(self, info: zipfile.ZipInfo) -> Member:
        """np.load's key for the member (its name less ".npy"), and its header when it is a .npy."""
        assert self._archive is not None
        name = info.filename
        if not name.endswith(".npy"):
            return Member(name, name, None, None)  # np.load gives these as raw bytes; they are copied as such
        with self._archive.open(info) as handle:
            try:
                shape, fortran_order, dtype = _read_header(handle)
            except ValueError:
                return Member(name[: -len(".npy")], name, None, None)
        return Member(name[: -len(".npy")], name, shape, dtype, fortran_order)

    def member(self, key: str) -> Member:
        for member in self.members:
            if member.key == key:
                return member
        raise KeyError(key)

    def read_images(self, key: str, start: int, stop: int) -> np.ndarray:
        """Images [start, stop) of the image array ``key`` as (stop - start, lr, lr), in native byte order."""
        member = self.member(key)
        assert member.shape is not None and member.dtype is not None
        row_shape = member.shape[-2:]
        count = stop - start
        if not self.is_npz:
            if self._memmap is None:
                self._memmap = np.load(self.path, mmap_mode="r")
            rows = np.asarray(self._memmap).reshape(-1, *row_shape)[start:stop]
        else:
            row_bytes = int(np.prod(row_shape)) * member.dtype.itemsize
            stream, data_offset = self._stream(member)
            stream.seek(data_offset + start * row_bytes)  # forward: continues; backward: the zip module rewinds
            data = stream.read(count * row_bytes)
            if len(data) != count * row_bytes:
                raise ValueError(f"{self.path}: {key} ends before image {stop - 1} (a truncated file?)")
            rows = np.frombuffer(data, dtype=member.dtype).reshape(count, *row_shape)
        return rows.astype(member.dtype.newbyteorder("="), copy=True)

    def _stream(self, member: Member) -> tuple[BinaryIO, int]:
        """The member's open stream and the offset of its data, opened on first use."""
        assert self._archive is not None
        if member.key not in self._streams:
            stream: BinaryIO = self._archive.open(member.stored_name)  # type: ignore[assignment]
            _read_header(stream)
            self._streams[member.key] = (stream, stream.tell())
        return self._streams[member.key]

    def copy_member(self, member: Member, target: zipfile.ZipFile) -> None:
        """The member's stored bytes, unchanged (and never unpickled), into ``target`` under the same name."""
        assert self._archive is not None
        with (
            self._archive.open(member.stored_name) as source,
            target.open(member.stored_name, "w", force_zip64=True) as copy,
        ):
            shutil.copyfileobj(source, copy, _COPY_CHUNK)

    def close(self) -> None:
        for stream, _ in self._streams.values():
            stream.close()
        self._streams.clear()
        self._memmap = None
        if self._archive is not None:
            self._archive.close()

    def __enter__(self) -> ArrayFile:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _header(shape: tuple[int, ...], dtype: np.dtype) -> dict[str, object]:
    return {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}


class ArrayWriter:
    """An output .npz (or one .npy) written member by member into ``temporary``, then moved onto ``path`` in one
    rename (``commit``): a reader of ``path`` sees the old file or the whole new one, never half of it."""

    def __init__(self, path: Path, temporary: Path, compressed: bool) -> None:
        self.path, self.temporary = path, temporary
        self.is_npz = path.suffix.lower() == ".npz"
        self._handle: BinaryIO = temporary.open("wb")
        self.archive: zipfile.ZipFile | None = None
        if self.is_npz:
            compression = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
            self.archive = zipfile.ZipFile(self._handle, "w", compression=compression, allowZip64=True)

    @contextmanager
    def array(self, key: str, shape: tuple[int, ...], dtype: np.dtype) -> Iterator[BinaryIO]:
        """A stream to write the C-order bytes of one array of ``shape`` into, after its .npy header."""
        if self.archive is None:
            np.lib.format.write_array_header_1_0(self._handle, _header(shape, dtype))
            yield self._handle
            return
        with self.archive.open(f"{key}.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, _header(shape, dtype))  # type: ignore[arg-type]
            yield member  # type: ignore[misc]

    def commit(self) -> None:
        if self.archive is not None:
            self.archive.close()
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self.temporary, self.path)

    def abort(self) -> None:
        if self.archive is not None:
            self.archive.close()
        self._handle.close()
        self.temporary.unlink(missing_ok=True)
