"""Reading ``.npy``/``.npz`` and raw binary files straight into placed memory.

``np.load`` then :func:`numamem.asarray` would read a file into NumPy's memory and copy it again;
:func:`load` and :func:`fromfile` allocate the placed array first (any creator keyword: ``node=``,
``nodes=``/``axis=``, ``policy=``, ``pages=``...) and read the file's bytes into it: one copy, and
no second array's worth of memory on whatever node the first one would land.

Placement is a property of the memory, not of the data: ``pickle``, ``copy.deepcopy`` and
``np.save`` keep an array's values but not where its pages are, and give back NumPy memory.
:func:`load` restores a saved array onto a node; ``numamem.asarray(a)`` copies a numamem array
with its own placement.
"""
from __future__ import annotations

import os
import zipfile

import numpy as np
from numpy.lib import format as npy_format

from numamem.arrays import empty
from numamem.inspect import owner

__all__ = ["load", "fromfile"]

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def load(file, **placement_kw):
    """Read a ``.npy`` or ``.npz`` file into arrays placed as asked (see :func:`numamem.empty`).

    Parameters
    ----------
    file : str, os.PathLike or binary file object
        The file; a file object must be seekable and is read from its current position.
    **placement_kw
        The creators' keywords: ``node``, ``nodes``, ``axis``, ``policy``, ``align``, ``pages``,
        ``populate``.

    Returns
    -------
    numpy.ndarray or dict of str to numpy.ndarray
        The array of a ``.npy`` file (its dtype, shape and C/F order as stored); for a ``.npz``
        file every array in it, by name, each placed as asked.

    Raises
    ------
    ValueError
        If the file is neither ``.npy`` nor ``.npz``, or ends before its data does.
    TypeError
        For arrays of Python objects (pickled data is never loaded).

    Examples
    --------
    >>> import io, numpy as np, numamem
    >>> saved = io.BytesIO(); np.save(saved, np.arange(6.0).reshape(2, 3)); _ = saved.seek(0)
    >>> a = numamem.load(saved, node=0)
    >>> a.sum(), numamem.placement(a).bytes_per_node
    (np.float64(15.0), {0: 48})
    """
    with _opened(file) as stream:
        name = getattr(stream, "name", "the file")
        start = stream.tell()
        magic = stream.read(len(_NPY_MAGIC))
        stream.seek(start)
        if magic.startswith(_ZIP_MAGIC):
            with zipfile.ZipFile(stream) as archive:
                return {
                    member[:-4] if member.endswith(".npy") else member: _read_npy(
                        archive.open(member), f"{name}[{member}]", placement_kw)
                    for member in archive.namelist()
                }
        if magic != _NPY_MAGIC:
            raise ValueError(f"{name} is not a .npy or .npz file (it starts with {magic!r})")
        return _read_npy(stream, name, placement_kw)


def fromfile(file, dtype=float, count: int = -1, offset: int = 0, **placement_kw) -> np.ndarray:
    """Read raw binary data (as ``ndarray.tofile`` writes it) into a 1-d array placed as asked.

    Parameters
    ----------
    file : str, os.PathLike or binary file object
    dtype : data-type
        The items' dtype (no Python objects).
    count : int, default -1
        Items to read; -1 reads every whole item to the end of the file.
    offset : int, default 0
        Bytes to skip first (from the current position of a file object).
    **placement_kw
        The creators' keywords (see :func:`numamem.empty`).

    Raises
    ------
    ValueError
        If the file holds fewer than ``count`` items, or for a negative ``offset``.
    """
    dtype = np.dtype(dtype)
    if type(count) is not int and not isinstance(count, np.integer) or isinstance(count, bool):
        raise TypeError(f"count must be an int, not {count!r}")
    if type(offset) is not int and not isinstance(offset, np.integer) or isinstance(offset, bool):
        raise TypeError(f"offset must be an int, not {offset!r}")
    if offset < 0:
        raise ValueError(f"offset must not be negative, not {offset}")
    with _opened(file) as stream:
        name = getattr(stream, "name", "the file")
        stream.seek(offset, os.SEEK_CUR)
        if count < 0:
            here = stream.tell()
            available = stream.seek(0, os.SEEK_END) - here
            stream.seek(here)
            count = available // dtype.itemsize if dtype.itemsize else 0
        array = empty(int(count), dtype, **placement_kw)
        _fill(stream, array, name)
    return array


class _opened:
    """Open a path for binary reading, or lend a file object without closing it."""

    def __init__(self, file):
        self._owned = isinstance(file, (str, bytes, os.PathLike))
        self._stream = open(file, "rb") if self._owned else file
        if not self._owned and not (hasattr(self._stream, "readinto") and self._stream.seekable()):
            raise TypeError(f"file must be a path or a seekable binary file object, not {file!r}")

    def __enter__(self):
        return self._stream

    def __exit__(self, *exc_info):
        if self._owned:
            self._stream.close()


def _read_npy(stream, name: str, placement_kw: dict) -> np.ndarray:
    with stream:
        version = npy_format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = npy_format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = npy_format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"{name}: .npy format version {version} is not supported (1.0 and 2.0 are)")
        if dtype.hasobject:
            raise TypeError(f"{name} holds Python objects (dtype {dtype}); numamem loads plain data only")
        array = empty(shape, dtype, "F" if fortran_order else "C", **placement_kw)
        _fill(stream, array, name)
    return array


def _fill(stream, array: np.ndarray, name: str) -> None:
    """Read ``array.nbytes`` bytes from ``stream`` straight into the array's memory."""
    if array.nbytes == 0:
        return
    own = owner(array)
    start = array.ctypes.data - own.address
    # The owner's own byte export: works for every dtype (datetimes have no buffer format).
    with memoryview(own) as whole, whole[start:start + array.nbytes] as target:
        filled = 0
        while filled < array.nbytes:
            got = stream.readinto(target[filled:])
            if not got:
                raise ValueError(f"{name} ends after {filled} of the {array.nbytes} bytes of its data")
            filled += got
