"""``OUT.parts/``: the finished shards of a run that has not been assembled yet, and what the run was.

Each shard's answer is one small .npz, ``shard-000017.npz``, written under a temporary name and renamed into
place, so a part that exists is whole. ``plan.json`` records the input (path, size, modification time), the
options, the model and the shard size; ``--resume`` refuses to continue a run whose plan differs, since its
parts would not belong to the new output. A part with failed images is redone by the next ``--resume``.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from xraysr.service.batch.shards import ShardResult
from xraysr.service.runtimes.atomic import write_atomically

PLAN_FORMAT = 1


def parts_folder(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


def describe_input(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def encode_part(result: ShardResult) -> bytes:
    """A shard's answer as the bytes of its part file (also what a Ray actor sends back to the driver)."""
    arrays: dict[str, np.ndarray] = {
        "index": np.array(result.index, np.int64),
        "images": result.images,
        "failed": np.array(sorted(result.failures), np.int64),
        "errors": np.array([result.failures[index] for index in sorted(result.failures)], dtype=np.str_),
    }
    if result.uncertainty is not None:
        arrays["uncertainty"] = result.uncertainty
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def decode_part(data: bytes | Path) -> ShardResult:
    with np.load(io.BytesIO(data) if isinstance(data, bytes) else data) as part:
        failures = dict(zip(part["failed"].tolist(), part["errors"].tolist(), strict=True))
        uncertainty = part["uncertainty"] if "uncertainty" in part.files else None
        return ShardResult(int(part["index"]), part["images"], uncertainty, failures)


class Parts:
    """The parts folder of one output."""

    def __init__(self, output: Path) -> None:
        self.folder = parts_folder(output)

    def path(self, index: int) -> Path:
        return self.folder / f"shard-{index:06d}.npz"

    def start(self, plan: dict[str, Any], resume: bool) -> None:
        """A fresh folder holding ``plan``, or with ``resume`` the folder a run with the same plan left."""
        plan = {"format": PLAN_FORMAT, **plan}
        plan_path = self.folder / "plan.json"
        if self.folder.exists() and not resume:
            raise FileExistsError(
                f"{self.folder} holds the parts of a run that did not finish: --resume continues it (same input "
                "and options), or remove the folder to start over"
            )
        if resume and plan_path.is_file():
            left = json.loads(plan_path.read_text())
            changed = sorted(name for name in {*plan, *left} if plan.get(name) != left.get(name))
            if changed:
                raise ValueError(
                    f"--resume: {self.folder} was started with another {', '.join(changed)} "
                    f"({', '.join(f'{name}: {left.get(name)} then, {plan.get(name)} now' for name in changed)}); "
                    "run with what it was started with, or remove the folder to start over"
                )
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomically(plan_path, json.dumps(plan, indent=2, sort_keys=True).encode())

    def finished(self) -> set[int]:
        """The shards whose part is whole and has no failed image."""
        done = set()
        for path in self.folder.glob("shard-*.npz"):
            try:
                with np.load(path) as part:  # reads only the members asked for, not the images
                    index, failed = int(part["index"]), len(part["failed"])
            except (OSError, ValueError, KeyError):
                continue  # unreadable: the shard is simply run again
            if not failed and path == self.path(index):
                done.add(index)
        return done

    def save(self, index: int, part: bytes) -> None:
        """A shard's part (``encode_part``), whole or not at all."""
        write_atomically(self.path(index), part)  # a killed run leaves no half-written part

    def remove(self) -> None:
        shutil.rmtree(self.folder)
