"""service/batch/arrays.py, shards.py and parts.py without a model: rows read lazily from real .npz/.npy files
(deflated, stored, big-endian), outputs np.load reads, other members copied byte for byte and never unpickled,
the pinned per-image seeds, the shard plan, and the parts folder's refusals."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from xraysr.service.batch.arrays import ArrayFile, ArrayWriter
from xraysr.service.batch.parts import Parts, decode_part, encode_part
from xraysr.service.batch.shards import Shard, ShardResult, image_seed, plan_shards
from xraysr.service.sampler import SEED_MAX


def _stack(count: int, dtype: type = np.uint8) -> np.ndarray:
    return (np.arange(count * 64 * 64, dtype=np.int64).reshape(count, 64, 64) * 7 % 251).astype(dtype)


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_rows_of_an_npz_member_read_lazily_forwards_and_backwards(tmp_path: Path, save: object) -> None:
    images = _stack(10)
    path = tmp_path / "in.npz"
    save(path, train_images=images, train_labels=np.arange(10))  # type: ignore[operator]
    with ArrayFile(path) as source:
        assert [(m.key, m.shape, m.is_image_array(64)) for m in source.members] == [
            ("train_images", (10, 64, 64), True),
            ("train_labels", (10,), False),
        ]
        assert source.compressed is (save is np.savez_compressed)
        for start, stop in ((0, 3), (3, 7), (7, 10), (2, 5)):  # the last one goes back
            np.testing.assert_array_equal(source.read_images("train_images", start, stop), images[start:stop])


def test_a_npy_and_a_big_endian_16_bit_array_are_read_in_native_order(tmp_path: Path) -> None:
    images = _stack(4, np.uint16) * 200
    np.save(tmp_path / "in.npy", images.astype(">u2"))
    with ArrayFile(tmp_path / "in.npy") as source:
        (member,) = source.members
        assert (member.key, member.shape, member.dtype) == ("", (4, 64, 64), np.dtype(">u2"))
        rows = source.read_images("", 1, 3)
    assert rows.dtype == np.dtype(np.uint16) and rows.dtype.isnative
    np.testing.assert_array_equal(rows, images[1:3])


def test_one_64x64_image_is_an_image_array_of_one(tmp_path: Path) -> None:
    np.savez(tmp_path / "one.npz", image=_stack(1)[0])
    with ArrayFile(tmp_path / "one.npz") as source:
        (member,) = source.members
        assert member.is_image_array(64) and member.images == 1
        np.testing.assert_array_equal(source.read_images("image", 0, 1), _stack(1))


def test_the_writer_streams_npz_members_and_copies_the_others_without_unpickling(tmp_path: Path) -> None:
    class Exploding:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (pytest.fail, ("unpickled",))

    np.savez_compressed(tmp_path / "in.npz", labels=np.arange(3), ids=np.array([Exploding()], dtype=object))
    with zipfile.ZipFile(tmp_path / "in.npz") as archive:
        stored = {name: archive.read(name) for name in archive.namelist()}
    out = tmp_path / "out.npz"
    with ArrayFile(tmp_path / "in.npz") as source:
        writer = ArrayWriter(out, tmp_path / "out.tmp", source.compressed)
        with writer.array("images", (2, 256, 256), np.dtype(np.uint8)) as stream:
            for value in (1, 2):
                stream.write(np.full((1, 256, 256), value, np.uint8).tobytes())
        assert writer.archive is not None
        for member in source.members:
            source.copy_member(member, writer.archive)
        assert not out.exists()  # nothing at OUT until the whole file is there
        writer.commit()
    with zipfile.ZipFile(out) as archive:
        assert {name: archive.read(name) for name in stored} == stored
    with np.load(out) as result:
        np.testing.assert_array_equal(result["images"][:, 0, 0], [1, 2])
        np.testing.assert_array_equal(result["labels"], np.arange(3))
    assert not (tmp_path / "out.tmp").exists()


def test_an_aborted_writer_leaves_neither_output_nor_temporary(tmp_path: Path) -> None:
    writer = ArrayWriter(tmp_path / "out.npy", tmp_path / "out.tmp", compressed=False)
    with writer.array("", (1, 256, 256), np.dtype(np.uint8)) as stream:
        stream.write(bytes(256 * 256))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_image_seeds_are_pinned_and_depend_on_seed_key_and_index() -> None:
    # Pinned: a change here changes every array result of the loop (README: Many images).
    assert [image_seed(0, "train_images", index) for index in range(3)] == [4964138, 1675153687, 297323273]
    assert image_seed(7, "train_images", 0) == 517019196
    assert image_seed(0, "test_images", 0) == 2098117289
    seeds = {image_seed(seed, key, index) for seed in (0, SEED_MAX) for key in ("", "a") for index in range(500)}
    assert len(seeds) == 2000 and all(0 <= seed <= SEED_MAX for seed in seeds)


def test_shards_never_span_two_arrays() -> None:
    assert plan_shards({"train_images": 5, "val_images": 2, "one": 1}, 2) == [
        Shard(0, "train_images", 0, 2),
        Shard(1, "train_images", 2, 4),
        Shard(2, "train_images", 4, 5),
        Shard(3, "val_images", 0, 2),
        Shard(4, "one", 0, 1),
    ]
    with pytest.raises(ValueError, match="--shard-size must be 1 or more"):
        plan_shards({"a": 1}, 0)


def test_a_part_round_trips_and_one_with_failures_is_not_finished(tmp_path: Path) -> None:
    parts = Parts(tmp_path / "out.npz")
    parts.start({"input": "a", "shard_size": 2}, resume=False)
    images = np.full((2, 256, 256), 9, np.uint8)
    parts.save(0, encode_part(ShardResult(0, images, None)))
    parts.save(1, encode_part(ShardResult(1, images, images, {3: "RuntimeError: boom"})))
    (parts.folder / "shard-000002.npz.tmp").write_bytes(b"half a part")  # what a kill mid-write leaves
    assert parts.finished() == {0}
    again = decode_part(parts.path(1))
    assert again.failures == {3: "RuntimeError: boom"} and again.uncertainty is not None
    np.testing.assert_array_equal(again.images, images)


def test_parts_refuse_a_second_run_and_a_resume_with_other_options(tmp_path: Path) -> None:
    parts = Parts(tmp_path / "out.npz")
    parts.start({"input": "a", "options": {"seed": 0}}, resume=False)
    with pytest.raises(FileExistsError, match="--resume continues it"):
        Parts(tmp_path / "out.npz").start({"input": "a", "options": {"seed": 0}}, resume=False)
    with pytest.raises(ValueError, match=r"another options \(options: \{'seed': 0\} then, \{'seed': 1\} now\)"):
        Parts(tmp_path / "out.npz").start({"input": "a", "options": {"seed": 1}}, resume=True)
    Parts(tmp_path / "out.npz").start({"input": "a", "options": {"seed": 0}}, resume=True)  # the same: fine


def test_reading_a_deflated_archive_shard_by_shard_holds_one_shard(tmp_path: Path) -> None:
    import tracemalloc

    count, shard = 8192, 256  # 32 MiB of images; a shard is 1 MiB
    images = np.broadcast_to(np.arange(count, dtype=np.uint8)[:, None, None], (count, 64, 64))
    np.savez_compressed(tmp_path / "big.npz", train_images=images)
    del images
    with ArrayFile(tmp_path / "big.npz") as source:
        tracemalloc.start()
        for start in range(0, count, shard):
            rows = source.read_images("train_images", start, start + shard)
            assert rows[0, 0, 0] == start % 256 and rows[-1, 0, 0] == (start + shard - 1) % 256
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 4 * shard * 64 * 64, f"peak {peak / 2**20:.1f} MiB"
