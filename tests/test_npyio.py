"""numamem.load / numamem.fromfile: files read straight into placed memory (issue 12, item 23)."""
from __future__ import annotations

import copy
import io
import pickle

import numpy as np
import pytest

import numamem

ARRAYS = {
    "c": np.arange(12.0).reshape(3, 4),
    "f": np.asfortranarray(np.arange(24, dtype=np.int16).reshape(4, 6)),
    "big": np.arange(300_000, dtype=">f8"),  # beyond the pool: a mapping of its own
    "rec": np.array([(1, 2.5), (3, 4.5)], dtype=[("a", "i4"), ("b", "f8")]),
    "when": np.array(["2024-01-01", "2025-06-30"], dtype="M8[D]"),
    "none": np.zeros((0, 3), np.float32),
}


@pytest.mark.parametrize("key", list(ARRAYS))
def test_load_npy_places_the_array(tmp_path, node0, key):
    original = ARRAYS[key]
    path = tmp_path / f"{key}.npy"
    np.save(path, original)
    loaded = numamem.load(path, node=node0)
    assert loaded.dtype == original.dtype and loaded.shape == original.shape
    assert loaded.flags.f_contiguous == original.flags.f_contiguous or original.ndim < 2
    np.testing.assert_array_equal(loaded, original)
    assert numamem.owner(loaded) is not None
    if loaded.nbytes:
        assert numamem.placement(loaded).bytes_per_node == {node0: loaded.nbytes}


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_load_npz_places_every_array(tmp_path, node0, save):
    path = tmp_path / "all.npz"
    save(path, **ARRAYS)
    loaded = numamem.load(str(path), node=node0, pages="4k")
    assert sorted(loaded) == sorted(ARRAYS)
    for key, original in ARRAYS.items():
        np.testing.assert_array_equal(loaded[key], original)
        assert numamem.placement(loaded[key]).requested["pages"] == ["4k"]


def test_load_from_a_file_object_and_split(node0):
    stream = io.BytesIO()
    np.save(stream, np.ones((64, 1024)))
    stream.seek(0)
    split = numamem.load(stream, nodes=[node0, node0], axis=0)
    assert [b.node for b in numamem.blocks(split)] == [node0, node0] and split.sum() == 64 * 1024


def test_load_refuses_clearly(tmp_path, node0):
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(TypeError, match="Python objects"):
        numamem.load(objects, node=node0)
    short = tmp_path / "short.npy"
    np.save(short, np.arange(1000.0))
    short.write_bytes(short.read_bytes()[:-8])
    with pytest.raises(ValueError, match="short.npy ends after 7992 of the 8000 bytes"):
        numamem.load(short, node=node0)
    text = tmp_path / "text.npy"
    text.write_text("not an array")
    with pytest.raises(ValueError, match="not a .npy or .npz file"):
        numamem.load(text, node=node0)
    with pytest.raises(ValueError, match="needs node="):
        numamem.load(short)  # the creators' own checks apply


def test_fromfile(tmp_path, node0):
    path = tmp_path / "raw.bin"
    np.arange(1000, dtype=np.int32).tofile(path)
    whole = numamem.fromfile(path, np.int32, node=node0)
    np.testing.assert_array_equal(whole, np.arange(1000, dtype=np.int32))
    part = numamem.fromfile(path, np.int32, count=10, offset=40, node=node0)
    np.testing.assert_array_equal(part, np.arange(10, 20, dtype=np.int32))
    with pytest.raises(ValueError, match="ends after"):
        numamem.fromfile(path, np.int32, count=2000, node=node0)
    with pytest.raises(TypeError, match="count"):
        numamem.fromfile(path, np.int32, count=1.5, node=node0)
    with pytest.raises(TypeError, match="Python objects"):
        numamem.fromfile(path, object, node=node0)


def test_pickle_and_deepcopy_keep_values_not_placement(node0):
    # Documented (numamem.npyio): the copies are NumPy memory; asarray(a) copies with placement.
    a = numamem.full(1000, 2.0, node=node0)
    for copied in (pickle.loads(pickle.dumps(a)), copy.deepcopy(a)):
        np.testing.assert_array_equal(copied, a)
        assert numamem.owner(copied) is None
    placed = numamem.asarray(a)
    assert numamem.placement(placed).requested["node"] == node0
