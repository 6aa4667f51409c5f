"""The Dask side of a region run: submit chunk and line-group tasks, record them as they finish.

Chunk tasks are submitted at once. A line group is submitted when every chunk under it (and
its halo) is recorded, by the client rather than as a Dask dependency: a finished task's result
is released as soon as it is recorded, so a worker lost afterwards does not make the scheduler
redo chunks that are already on disk. When every chunk and group of an input is done, its
probability VRT is made here and its lines are stitched by one more task, while the workers go on.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import Cancelled, RoadSegError
from ..params import BLOCK_SIZE, RunSettings, VectoriseParams
from .chunk import ChunkTask, segment_chunk, warm_up
from .manifest import Manifest
from .plan import InputPlan
from .stitch import GroupTask, group_pieces, stitch_lines

RETRIES = 2  # a task that raises is tried this many more times; lost workers do not count
POLL_S = 0.05


@dataclass
class RegionProgress:
    """Where a run is: chunks and line groups done, of how many. `client`: the Dask client."""

    chunks_done: int
    chunks_total: int
    groups_done: int
    groups_total: int
    client: Any = None

    @property
    def fraction(self) -> float:
        total = self.chunks_total + self.groups_total
        return (self.chunks_done + self.groups_done) / total if total else 1.0


def _reruns(dask_scheduler: Any, keys: list[str], retries: int) -> int:
    """Runs beyond the first of `keys` (on the scheduler): lost with a worker or retried after an error."""
    n = 0
    for key in keys:
        ts = dask_scheduler.tasks.get(key)
        if ts is not None:
            n += int(getattr(ts, "suspicious", 0)) + max(0, retries - int(getattr(ts, "retries", retries)))
    return n


class Job:
    """One run's tasks on `client` (see the module notes); `run` returns when all are recorded."""

    def __init__(self, client: Any, plans: list[InputPlan], folder: Path, settings: RunSettings,
                 vectorise: VectoriseParams, manifest: Manifest, threads: int | None,
                 on_progress: Callable[[Any], None] | None, is_cancelled: Callable[[], bool] | None) -> None:
        self.client, self.plans, self.folder, self.manifest = client, plans, folder, manifest
        self.settings, self.vectorise, self.threads = settings, vectorise, threads
        self.on_progress, self.is_cancelled = on_progress, is_cancelled
        self.token = uuid.uuid4().hex[:8]
        self.pending: dict[str, tuple[Any, str, int, int]] = {}  # key -> (future, kind, input, item)
        self.chunks_left: list[set[int]] = [set() for _ in plans]
        self.groups_left: list[set[int]] = [set() for _ in plans]
        self.waiting: list[dict[int, set[int]]] = [{} for _ in plans]  # group -> chunks it still needs
        self.frames: dict[int, Any] = {}  # input -> its lines
        self.stitching: set[int] = set()
        self.warnings: set[str] = set()
        self.chunks_run = self.pixels_run = self.reruns = 0
        self.started = self.finished = self.segment_seconds = 0.0
        self.backends: list[str] = []

    def run(self, on_ready: Callable[[], None] | None = None) -> None:
        from distributed import as_completed

        self.warm_up()
        if on_ready is not None:
            on_ready()
        self.started = time.perf_counter()
        self.completed = as_completed(loop=self.client.loop)
        for i, plan in enumerate(self.plans):
            self.chunks_left[i] = {c for c, ch in enumerate(plan.chunks) if not self._done(plan.part(ch.name))}
            for c in sorted(self.chunks_left[i]):
                self._submit_chunk(i, c)
            for g, group in enumerate(plan.groups):
                if self._done(plan.part(group.name, ".npz")):
                    continue
                self.groups_left[i].add(g)
                self.waiting[i][g] = self.chunks_left[i].intersection(group.chunks)
                if not self.waiting[i][g]:
                    self._submit_group(i, g)
            self._maybe_finish(i)
        self._progress()
        try:
            while not self.completed.is_empty():
                if self.is_cancelled is not None and self.is_cancelled():
                    raise Cancelled()
                if not self.completed.has_ready():
                    time.sleep(POLL_S)
                    continue
                batch = self.completed.next_batch(block=False)
                self.reruns += self._count_reruns([f.key for f in batch])
                for future in batch:
                    self._record(future)
                self._progress()
        finally:
            if self.pending:
                self.client.cancel([f for f, *_ in self.pending.values()])
        self.finished = time.perf_counter()

    def warm_up(self) -> None:
        """The model (and the vectoriser) loaded on every worker at once; workers that join later
        (a lost worker's replacement) load it with their first task."""
        try:
            loaded = self.client.run(warm_up, self.settings, self.threads)
        except RoadSegError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. onnxruntime missing on a worker
            raise RoadSegError(self.settings.model, f"a worker cannot load the model ({exc})",
                               "install RoadSeg's packages on every worker") from None
        self.backends = sorted(set(loaded.values()))

    def _done(self, name: str) -> bool:
        return self.manifest.finished(name)

    def _submit(self, fn: Callable, task: Any, kind: str, i: int, item: int, name: str, priority: int) -> None:
        key = f"roadseg-{kind}-{self.token}-{self.plans[i].key}-{name}"
        future = self.client.submit(fn, task, key=key, retries=RETRIES, pure=False, priority=priority)
        self.pending[key] = (future, kind, i, item)
        self.completed.add(future)

    def _submit_chunk(self, i: int, c: int) -> None:
        plan, chunk = self.plans[i], self.plans[i].chunks[c]
        task = ChunkTask(plan.source, chunk.window, str(self.folder / plan.part(chunk.name)), self.settings,
                         self.threads, plan.normaliser)
        self._submit(segment_chunk, task, "chunk", i, c, chunk.name, 0)

    def _submit_group(self, i: int, g: int) -> None:
        plan, group = self.plans[i], self.plans[i].groups[g]
        parts = tuple((plan.chunks[k].window, str(self.folder / plan.part(plan.chunks[k].name)))
                      for k in group.chunks)
        task = GroupTask(group.core, (plan.height, plan.width), self.vectorise.block_size or BLOCK_SIZE,
                         self.vectorise.halo, parts, str(self.folder / plan.part(group.name, ".npz")),
                         self.settings.binary, self.settings.threshold)
        self._submit(group_pieces, task, "lines", i, g, group.name, 1)  # first: frees the client sooner

    def _record(self, future: Any) -> None:
        from distributed import KilledWorker

        _, kind, i, item = self.pending.pop(future.key)
        plan = self.plans[i]
        try:
            info = future.result()
        except KilledWorker:
            raise RoadSegError(plan.source, f"a {kind} task ({future.key}) was lost with several workers in a row "
                               "(out of memory?)", "use fewer workers per machine or a smaller --chunk; finished "
                               "parts are kept: run again with --resume") from None
        finally:
            future.release()
        if kind == "chunk":
            self.manifest.record(plan.part(plan.chunks[item].name), info)
            self.chunks_run += 1
            self.pixels_run += info["pixels"]
            self.warnings.update(info["warnings"])
            self.chunks_left[i].discard(item)
            for g, needs in list(self.waiting[i].items()):
                if item in needs:
                    needs.discard(item)
                    if not needs:
                        self._submit_group(i, g)
            if not any(self.chunks_left):
                self.segment_seconds = time.perf_counter() - self.started
        elif kind == "lines":
            self.manifest.record(plan.part(plan.groups[item].name, ".npz"), info)
            self.groups_left[i].discard(item)
        else:
            self.frames[i] = info
            return
        self._maybe_finish(i)

    def _maybe_finish(self, i: int) -> None:
        """Once all its parts are recorded: the input's VRT (here) and its lines (a task: the
        clean-up of an input's whole skeleton is the only serial step, so it runs on a worker
        while the others go on, and the client only merges the frames)."""
        from .parts import build_vrt

        plan = self.plans[i]
        if self.chunks_left[i] or self.groups_left[i] or i in self.stitching:
            return
        self.stitching.add(i)
        vrt = build_vrt(self.folder / f"{plan.key}.vrt",
                        [(ch.window, str(self.folder / plan.part(ch.name))) for ch in plan.chunks],
                        plan.width, plan.height, plan.crs, plan.transform, self.settings.tags)
        files = [str(self.folder / plan.part(g.name, ".npz")) for g in plan.groups]
        key = f"roadseg-stitch-{self.token}-{plan.key}"
        future = self.client.submit(stitch_lines, files, str(vrt), self.vectorise, self.settings.binary, key=key,
                                    retries=RETRIES, pure=False, priority=2)
        self.pending[key] = (future, "stitch", i, 0)
        self.completed.add(future)

    def _count_reruns(self, keys: list[str]) -> int:
        try:
            return int(self.client.run_on_scheduler(_reruns, keys=keys, retries=RETRIES))
        except Exception:  # noqa: BLE001 - only a figure of the summary
            return 0

    def _progress(self) -> None:
        if self.on_progress is None:
            return
        chunks = sum(len(p.chunks) for p in self.plans)
        groups = sum(len(p.groups) for p in self.plans)
        self.on_progress(RegionProgress(chunks - sum(map(len, self.chunks_left)), chunks,
                                        groups - sum(map(len, self.groups_left)), groups, self.client))
