"""A run's training state after an epoch: kept in memory every epoch, saved to the run's artifacts every
`train.checkpoint_every` epochs and when the run is interrupted; what `resume=true` continues from.

The state is everything the next epoch depends on: every model variable (the dropout seed generators'
state included), every optimizer variable (its step count drives the schedule), the early-stopping
monitor, and the metric history so far. The data stream needs nothing: it is a function of (seed, step).

A run's artifacts hold two slots, `checkpoint/a` and `checkpoint/b`, written in turn: a job killed while
uploading one (artifact stores copy files in place, not atomically) leaves the other whole. Each slot's
`state.json` is uploaded after its `state.npz` and records the npz's SHA-256, so a half-written slot is
recognised and the other one resumed from.
"""

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from src.core.errors import ConfigError, first_line

log = logging.getLogger(__name__)

ARTIFACT_DIR = "checkpoint"  # in the run's artifacts, where a job on any machine finds it
SLOTS = ("a", "b")  # written in turn; resume reads the newest whole one
STATE_FILE = "state.npz"
META_FILE = "state.json"  # uploaded last: names the epoch and the SHA-256 of its STATE_FILE


class DamagedCheckpoint(ValueError):
    """A slot whose files are missing, half-written or do not match."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Snapshot:
    """The training state after `epoch` (the last completed one)."""

    epoch: int
    model_variables: List[np.ndarray]
    optimizer_variables: List[np.ndarray]
    monitor: Dict  # EpochMonitor's fields but its weights
    best_weights: Optional[List[np.ndarray]]
    history: Dict[str, List[float]] = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        """Write into `folder` (replaced whole: a reader never sees half of one)."""
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
        arrays = {f"model_{i}": a for i, a in enumerate(self.model_variables)}
        arrays.update({f"optimizer_{i}": a for i, a in enumerate(self.optimizer_variables)})
        arrays.update({f"best_{i}": a for i, a in enumerate(self.best_weights or [])})
        np.savez(tmp / STATE_FILE, **arrays)
        meta = {"epoch": self.epoch, "monitor": self.monitor, "history": self.history,
                "counts": [len(self.model_variables), len(self.optimizer_variables), len(self.best_weights or [])],
                "sha256": _sha256(tmp / STATE_FILE)}
        (tmp / META_FILE).write_text(json.dumps(meta))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)

    @classmethod
    def load(cls, folder: Path) -> "Snapshot":
        """Read a slot written by `save`; DamagedCheckpoint if it is not whole."""
        meta = read_meta(folder / META_FILE)
        n_model, n_optimizer, n_best = meta["counts"]
        if not (folder / STATE_FILE).is_file() or _sha256(folder / STATE_FILE) != meta["sha256"]:
            raise DamagedCheckpoint(f"{STATE_FILE} does not match {META_FILE} (half-written)")
        with np.load(folder / STATE_FILE) as arrays:
            model = [arrays[f"model_{i}"] for i in range(n_model)]
            optimizer = [arrays[f"optimizer_{i}"] for i in range(n_optimizer)]
            best = [arrays[f"best_{i}"] for i in range(n_best)] or None
        return cls(meta["epoch"], model, optimizer, meta["monitor"], best, meta["history"])


def read_meta(path: Path) -> Dict:
    """A slot's META_FILE; DamagedCheckpoint if it is missing or half-written."""
    try:
        meta = json.loads(path.read_text())
        int(meta["epoch"]), meta["sha256"], meta["counts"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DamagedCheckpoint(f"{path.name} unreadable ({type(exc).__name__})") from None
    return meta



class StateReader:
    """Copies every model and optimizer variable to numpy in one call into the runtime: one compiled function
    packs them into a flat buffer per dtype (~2.8 ms for the large model against ~7 ms variable by variable)."""

    def __init__(self, model):
        import tensorflow as tf

        self.variables = [*model.variables, *model.optimizer.variables]
        self.n_model = len(model.variables)
        self.dtypes = sorted({_dtype(v) for v in self.variables})
        groups = [[v for v in self.variables if _dtype(v) == d] for d in self.dtypes]
        self.pack = tf.function(lambda: [tf.concat([tf.reshape(tf.convert_to_tensor(v), [-1]) for v in g], 0)
                                         for g in groups])
        # each variable's place in its buffer, as plain ints, worked out once. numpy must not see a TensorShape
        # while training runs: a Ctrl-C landing inside numpy's look at it was swallowed there, and the epoch then
        # failed with a TypeError instead of ending the run KILLED (seen in CI)
        self.layout = []
        offsets = dict.fromkeys(self.dtypes, 0)
        for v in self.variables:
            shape = tuple(int(d) for d in v.shape)
            size = math.prod(shape)
            self.layout.append((_dtype(v), offsets[_dtype(v)], size, shape))
            offsets[_dtype(v)] += size

    def read(self):
        """(model values, optimizer values): numpy views into fresh buffers, in variable order."""
        buffers = dict(zip(self.dtypes, (t.numpy() for t in self.pack())))
        values = [buffers[name][start:start + size].reshape(shape) for name, start, size, shape in self.layout]
        return values[:self.n_model], values[self.n_model:]


def _dtype(variable) -> str:
    return getattr(variable.dtype, "name", variable.dtype)  # Keras 3 variables name it, tf.Variables hold a DType


def take(epoch: int, reader: StateReader, monitor, history: Dict[str, List[float]]) -> Snapshot:
    """The state now, after `epoch`: copies, so training on does not change it."""
    fields = {k: getattr(monitor, k) for k in ("best", "best_epoch", "wait", "stopped_epoch")}
    model_values, optimizer_values = reader.read()
    return Snapshot(epoch, model_values, optimizer_values, fields, monitor.best_weights,
                    {k: list(v) for k, v in history.items()})


def restore(snapshot: Snapshot, model, optimizer, monitor, *, origin: str = "the checkpoint") -> None:
    """Put a snapshot's state back into a freshly built model, its built optimizer and the monitor; ConfigError,
    before anything is assigned, when the snapshot's shapes are not the model's (its builder changed since)."""
    _check_shapes(snapshot.model_variables, model.variables, origin, "model")
    _check_shapes(snapshot.optimizer_variables, optimizer.variables, origin, "optimizer")
    for variable, value in zip(model.variables, snapshot.model_variables, strict=True):
        variable.assign(value)
    for variable, value in zip(optimizer.variables, snapshot.optimizer_variables, strict=True):
        variable.assign(value)
    for key, value in snapshot.monitor.items():
        setattr(monitor, key, value)
    monitor.best_weights = snapshot.best_weights


def _check_shapes(values: List[np.ndarray], variables, origin: str, what: str) -> None:
    """ConfigError naming the first variable whose shape differs (or the counts), in one line."""
    advice = "the model's builder or option changed since; start a new run with resume=false"
    if len(values) != len(variables):
        raise ConfigError(f"resume: {origin} holds {len(values)} {what} variables, the model {len(variables)}: {advice}")
    for variable, value in zip(variables, values):
        shape = tuple(int(d) for d in variable.shape)
        if shape != tuple(value.shape):
            name = getattr(variable, "path", None) or variable.name
            raise ConfigError(f"resume: {origin} does not fit the model: {what} variable {name} is "
                              f"{tuple(value.shape)} in it, {shape} in the model ({advice})")


class Checkpointer:
    """An epoch callback: the state after every epoch copied in memory (~3 ms for the large model); every
    `every` epochs written and uploaded by a thread of its own (~45 ms), so training does not wait for it.
    `upload(file, artifact_path)` puts one file into the run's artifacts."""

    def __init__(self, every: int, folder: Path, upload: Callable[[Path, str], None], history: Dict[str, List[float]],
                 *, model, monitor, resumed_slot: Optional[str] = None):
        from concurrent.futures import ThreadPoolExecutor

        self.every, self.folder, self.upload, self.history = every, folder, upload, history
        # never overwrite the slot resumed from until a newer one is whole
        self.slots = list(SLOTS) if resumed_slot != SLOTS[0] else list(reversed(SLOTS))
        self.model, self.monitor = model, monitor  # what a checkpoint holds besides the history
        self.reader: Optional[StateReader] = None  # made after the first epoch, once the optimizer has its variables
        self.last: Optional[Snapshot] = None
        self.queued_epoch: Optional[int] = None
        self.pending = None  # the Future of the write in progress
        self.seconds: List[float] = []  # what each epoch's call cost the training thread (the bench reports it)
        self.write_seconds: List[float] = []  # what each write cost its own thread (on 2 busy cores, training too)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")  # one write at a time, in order

    def __call__(self, epoch: int, metrics: Dict[str, float]) -> None:
        started = time.perf_counter()
        if self.reader is None:
            self.reader = StateReader(self.model)
        self.last = take(epoch, self.reader, self.monitor, self.history)
        if self.every and (epoch + 1) % self.every == 0:
            self.save(wait=False)
        self.seconds.append(time.perf_counter() - started)

    def save(self, wait: bool = True) -> None:
        """Write the latest state and upload it to the run's artifacts (once per epoch); `wait` for it to be done."""
        if self.last is not None and self.queued_epoch != self.last.epoch:
            self.queued_epoch = self.last.epoch
            self.pending = self._writer.submit(self._write, self.last)
        if wait:
            self.close()

    def close(self) -> None:
        """Wait for the write in progress (training is over, or stopping)."""
        if self.pending is not None:
            self.pending.result()
        self._writer.shutdown(wait=True)

    def _write(self, snapshot: Snapshot) -> None:
        started = time.perf_counter()
        slot = self.slots[0]
        try:
            snapshot.save(self.folder / slot)
            self.upload(self.folder / slot / STATE_FILE, f"{ARTIFACT_DIR}/{slot}")
            self.upload(self.folder / slot / META_FILE, f"{ARTIFACT_DIR}/{slot}")  # last: the slot is whole now
            self.slots.reverse()
            self.write_seconds.append(time.perf_counter() - started)
        except Exception as exc:  # a full disk, the store gone: training goes on, resume has an older one
            log.warning("the checkpoint after epoch %d was not saved: %s", snapshot.epoch, first_line(exc))
            return
        log.info("checkpoint after epoch %d saved", snapshot.epoch)
