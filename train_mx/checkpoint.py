"""Training checkpoints, written as one unit.

``<out>/checkpoint/`` is a model folder (``weights.params`` with the fc6 branches,
``config.json``, ``manifest.json``, written by :func:`runtime.model.save_model`) that also
holds the run's state: ``state.json`` (iteration, epoch log, training seconds so far, where
the batch sampler's draws stand) and ``optimizer.params`` (the SGD momentum, in MXNet's
NDArray format like the weights: no pickle). ``config.json`` records the iteration and the
sha256 of both state files, so the manifest vouches for them too.

The folder is written whole beside its final place (``.checkpoint.new``), its files and the
folder flushed to disk (fsync), and swapped in by two renames (the previous one goes to
``.checkpoint.old`` in between), the parent folder flushed after them. A kill, a full disk,
a second Ctrl-C or a power cut at any moment therefore leaves the previous checkpoint or the
new one, never weights of one iteration with the state of another: :func:`recover` completes
a swap a kill cut in two. ``<out>/state.json`` is a copy of the state for
``train_mx.report``, written after the swap (a failure to write it is a warning: the
checkpoint is whole); ``--resume`` reads the one inside the checkpoint.
"""
from __future__ import annotations

import copy
import errno
import json
import os
import shutil
import sys
from pathlib import Path

from runtime.errors import TrackerInputError, last_line, write_error
from runtime.model import RUN_CHECKPOINT, load_model, save_model, sha256_file

CHECKPOINT = RUN_CHECKPOINT
NEW = ".checkpoint.new"
OLD = ".checkpoint.old"
STATE = "state.json"
OPTIMIZER = "optimizer.params"


def recover(out) -> None:
    """Complete a swap that a kill interrupted between its two renames (the new folder was
    whole before the first rename, so it becomes the checkpoint), and remove what a kill
    left beside a checkpoint (a folder half written, or the one it replaced)."""
    out = Path(out)
    ckpt, new, old = out / CHECKPOINT, out / NEW, out / OLD
    if not ckpt.exists() and old.is_dir():
        os.rename(new if new.is_dir() else old, ckpt)
    if ckpt.exists():
        for leftover in (new, old):
            if leftover.exists():
                shutil.rmtree(leftover)


def held_iteration(out):
    """The iteration ``--resume`` would continue from: that of the checkpoint, or of the one
    :func:`recover` would make of a swap cut in two; None when there is none or it cannot be
    read. Reads only (for the message of a run cut short)."""
    out = Path(out)
    ckpt, new, old = out / CHECKPOINT, out / NEW, out / OLD
    if ckpt.exists():
        folder = ckpt
    elif old.is_dir():
        folder = new if new.is_dir() else old
    else:
        return None
    try:
        return int(json.loads((folder / "config.json").read_text())["training"]["iteration"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def holds_run(out) -> bool:
    """Whether ``out`` holds a training run (a checkpoint, one being swapped, or a state)."""
    out = Path(out)
    return (out / STATE).exists() or (out / CHECKPOINT / "manifest.json").exists() or (out / OLD).is_dir()


def _fsync(path: Path) -> None:
    """Flush a file or a folder (its entries) to disk. A folder is flushed where the file
    system allows it: some (network, FUSE) refuse fsync on a folder, and a checkpoint must
    still be written there; a file's flush failing is an error."""
    folder = path.is_dir()
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if folder:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        if not folder or e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF,
                                         errno.EACCES, errno.EISDIR, errno.EPERM):
            raise
    finally:
        os.close(fd)


def _write_text(path: Path, text: str) -> None:
    """Write beside ``path`` and rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write(out, config: dict, params: dict, state: dict, optimizer=None, swapped=None) -> Path:
    """Write the checkpoint of ``state["iteration"]`` into ``out``: weights, config (with the
    iteration and the state files' sha256), state and optimizer states (name -> NDArray, or
    None where this process has none). ``swapped(iteration)`` is called as soon as the new
    checkpoint is in place. Raises OSError when a file cannot be written; the previous
    checkpoint is then untouched."""
    import mxnet as mx

    out = Path(out)
    recover(out)
    ckpt, new, old = out / CHECKPOINT, out / NEW, out / OLD
    if new.exists():  # the first checkpoint's write, cut short
        shutil.rmtree(new)
    try:
        new.mkdir()
        files = {}
        if optimizer is not None:
            try:
                mx.nd.save(str(new / OPTIMIZER), optimizer)
            except mx.base.MXNetError as e:  # a full disk, as MXNet reports it
                raise write_error(new / OPTIMIZER, e) from None
            files[OPTIMIZER] = sha256_file(new / OPTIMIZER)
        (new / STATE).write_text(json.dumps(state, indent=1))
        files[STATE] = sha256_file(new / STATE)
        config = copy.deepcopy(config)
        config.setdefault("training", {}).update(iteration=int(state["iteration"]), checkpoint_files=files)
        save_model(new, config, params)  # a failed write is an OSError naming the file
        for f in new.iterdir():  # on disk before the renames make them the checkpoint
            _fsync(f)
        _fsync(new)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    if ckpt.exists():
        os.rename(ckpt, old)
        os.rename(new, ckpt)  # a kill between the two: recover() finishes the swap
    else:
        os.rename(new, ckpt)
    if swapped is not None:
        swapped(int(state["iteration"]))
    _fsync(out)
    shutil.rmtree(old, ignore_errors=True)
    try:
        _write_text(out / STATE, json.dumps({k: state[k] for k in ("iteration", "log", "seconds") if k in state},
                                            indent=1))
    except OSError as e:
        print(f"warning: cannot write {out / STATE} (the copy of the state for train_mx.report; the checkpoint "
              f"of iteration {state['iteration']} is whole): {e.strerror or e}", file=sys.stderr, flush=True)
    return ckpt


def read(out):
    """The checkpoint in ``out`` for ``--resume``: (model, state, optimizer states or None).
    A checkpoint written before the state moved into it gives ``<out>/state.json`` and None."""
    import mxnet as mx

    out = Path(out)
    recover(out)
    ckpt = out / CHECKPOINT
    model = load_model(ckpt)
    training = model.config.get("training") if isinstance(model.config.get("training"), dict) else {}
    files = training.get("checkpoint_files")
    if files is None:  # an older checkpoint: the state beside it
        try:
            state = json.loads((out / STATE).read_text())
            int(state["iteration"]), list(state["log"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise TrackerInputError(f"--resume: {out / STATE} is missing or damaged ({e}); "
                                    "train into a new --out") from None
        return model, state, None
    for name, digest in dict(files).items():
        f = ckpt / name
        if not f.is_file() or sha256_file(f) != digest:
            raise TrackerInputError(f"--resume: {f} is missing or does not match its sha256 in {ckpt / 'config.json'}; "
                                    "restore the checkpoint folder or train into a new --out")
    try:
        state = json.loads((ckpt / STATE).read_text())
        if int(state["iteration"]) != int(training.get("iteration")):
            raise ValueError(f"iteration {state['iteration']}, config.json {training.get('iteration')}")
        list(state["log"])
        optimizer = mx.nd.load(str(ckpt / OPTIMIZER)) if OPTIMIZER in files else None
    except (OSError, ValueError, KeyError, TypeError, mx.base.MXNetError) as e:
        raise TrackerInputError(f"--resume: the state in {ckpt} is damaged ({last_line(e)}); "
                                "train into a new --out") from None
    return model, state, optimizer
