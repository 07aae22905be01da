"""Offline multi-domain training: ``python -m train_mx.train``.

Each iteration takes frames of one sequence (domain), one patch per frame and device,
scores ``--mine-from`` negatives (mining pass) and trains on 32 positives + the 96
hardest negatives. Shapes go through a ``BucketingModule`` keyed by (H, W, RoIs): every
key binds once, so after warm-up nothing re-binds (``binds`` in the log counts them).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

# Autotune once per bucket: executors are never re-bound, so cuDNN tunes each shape once.
os.environ.setdefault("MXNET_CUDNN_AUTOTUNE_DEFAULT", "1")

import mxnet as mx  # noqa: E402

from runtime.buckets import BucketPolicy  # noqa: E402
from runtime.errors import TrackerInputError  # noqa: E402
from runtime.model import ROI_SAMPLE_RATIO, save_model  # noqa: E402
from runtime.model import SHARED_SEQUENCES  # noqa: E402
from runtime.outputs import check_output_folder  # noqa: E402
from runtime.sources import looks_like_sequence, without_files  # noqa: E402
from runtime.stopping import StopRequest  # noqa: E402

from . import checkpoint, network  # noqa: E402
from .data import BatchSampler, load_domains, warn  # noqa: E402
from .launch import DIST_KVSTORES  # noqa: E402
from .weights import default_squeezenet_path, load_pretrained  # noqa: E402

MEAN = {"squeezenet": [104.0, 117.0, 123.0], "vggm": [128.0, 128.0, 128.0]}
FEATURE_SCALE = {"squeezenet": 1.0 / 32, "vggm": 1.0 / 32}
FREEZE = {"squeezenet": ["conv1", "fire2", "fire3"], "vggm": []}


def parse_ctx(text: str) -> list:
    out = []
    for part in text.split(","):
        kind, _, idx = part.strip().partition(":")
        if kind not in ("cpu", "gpu", "cuda") or not (idx or "0").isdigit():
            raise TrackerInputError(f"bad context {part!r} in --ctx; use cpu:0,cpu:1 or gpu:0,gpu:1")
        if kind != "cpu" and int(idx or 0) >= mx.context.num_gpus():  # MXNet would fail at bind, with a traceback
            raise TrackerInputError(f"--ctx {part.strip()}: MXNet sees {mx.context.num_gpus()} GPU(s); use cpu:0,cpu:1 "
                                    "(or the mxnet-cu11x wheel on a GPU machine)")
        out.append(mx.cpu(int(idx or 0)) if kind == "cpu" else mx.gpu(int(idx or 0)))
    return out


def softmax_loss(prob, labels) -> float:
    """Mean negative log-likelihood of ``labels`` (P, R) under softmax outputs (P, R, 2)."""
    pr = np.take_along_axis(prob, labels.astype(int)[..., None], axis=2)[..., 0]
    return float(-np.mean(np.log(np.clip(pr, 1e-12, None))))


BATCH_NEG = 96  # negatives per minibatch (MDNet), mined from --mine-from


def _index_keys(states: dict, names: list, shapes: dict) -> dict:
    """Parameter name of each key N of the first checkpoints' ``"i:N"`` states: the updater's
    own keys, ``index * devices + device`` (MXNet's layout without the kvstore updating), with
    the devices' count not recorded. It is the smallest count under which every state has its
    parameter's shape; with none, nothing maps (and the momentum starts from zero with a
    warning) rather than landing on the wrong weights."""
    if not states:
        return {}
    for devices in range(1, max(states) + 2):
        mapping = {n: names[n // devices] for n in states if n // devices < len(names)}
        if len(mapping) == len(states) and all(tuple(v.shape) == shapes[mapping[n]] for n, v in states.items()):
            return mapping
    return {}


class Trainer:
    """The bucketing module, optimizer and hard minibatch mining loop."""

    def __init__(self, extractor, n_domains, policy, contexts, lr=1e-4, fc_lr_mult=10.0, wd=5e-4,
                 momentum=0.9, clip=10.0, freeze=(), kvstore="local", batch_pos=32, batch_neg=BATCH_NEG,
                 mine_from=1024, seed=0, roi_shrink=0.0, instance_weight=0.0, roi_offset=0.0):
        self.extractor = extractor
        self.n_domains = n_domains
        self.policy = policy
        self.contexts = contexts
        self.P = len(contexts)
        if mine_from < batch_neg:
            raise ValueError(f"mine_from ({mine_from}) must be at least batch_neg ({batch_neg})")
        self.batch_pos, self.batch_neg, self.mine_from = batch_pos, batch_neg, mine_from
        # every minibatch is batch_pos positives then batch_neg negatives per patch
        self.labels = np.concatenate([np.ones((self.P, batch_pos)), np.zeros((self.P, batch_neg))],
                                     axis=1).astype(np.float32)
        self.feature_scale = FEATURE_SCALE[extractor]
        self.binds = 0
        self.bound_keys = []
        self.instance = float(instance_weight) > 0
        sym = network.training_symbol(extractor, n_domains, feature_scale=self.feature_scale,
                                      roi_shrink=float(roi_shrink), instance_weight=float(instance_weight),
                                      roi_offset=float(roi_offset))
        self.arg_names = sym.list_arguments()
        self.label_names = ("label", "inst_label") if self.instance else ("label",)
        params = [n for n in self.arg_names if n not in ("data", "rois", "domain_mask") + self.label_names]
        self.fixed = frozen(params, freeze)

        def sym_gen(key):
            return sym, ("data", "rois", "domain_mask"), self.label_names

        biggest = max(range(len(policy.shapes)), key=lambda b: policy.shapes[b][0] * policy.shapes[b][1])
        self.default_key = self._key(biggest, max(mine_from, batch_pos + batch_neg))
        mx.random.seed(seed)
        self.mod = mx.mod.BucketingModule(sym_gen, default_bucket_key=self.default_key, context=contexts,
                                          fixed_param_names=self.fixed)
        self.mod.bind(data_shapes=self._data_shapes(self.default_key), label_shapes=self._label_shapes(self.default_key),
                      for_training=True)
        self._count_bind(self.default_key)
        self.mod.init_params(initializer=mx.init.Mixed(["fc6_weight", ".*"], [mx.init.Normal(0.01), mx.init.Xavier(magnitude=2.0)]))
        self.lr_mult = {n: (fc_lr_mult * (2.0 if n.endswith("bias") else 1.0) if n.startswith("fc") else
                            (2.0 if n.endswith("bias") else 1.0)) for n in params}
        self.kvstore = mx.kv.create(kvstore) if kvstore in DIST_KVSTORES else kvstore
        # SoftmaxOutput(normalization="batch") averages over each device's RoIs; the kvstore
        # sums over the P devices of every worker (dist_sync: over all workers): average them.
        workers = 1 if isinstance(self.kvstore, str) else self.kvstore.num_workers
        opt = mx.optimizer.SGD(learning_rate=lr, momentum=momentum, wd=wd, clip_gradient=clip,
                               rescale_grad=1.0 / (self.P * workers), param_idx2name=dict(enumerate(params)))
        opt.set_lr_mult(self.lr_mult)
        opt.set_wd_mult({n: (0.0 if n.endswith("bias") else 1.0) for n in params})
        self.optimizer = opt
        self._pending_states = None  # optimizer states of a resumed run, set at the first step
        # The module's init_optimizer copies the weights into the kvstore (with dist_sync it
        # broadcasts rank 0's); with several devices or dist_sync the kvstore owns the weights
        # from then on and set_params() would be overwritten by the first update. So it runs
        # at the first step, after pretrained / resumed weights are in.

    def _init_optimizer(self):
        if not self.mod.optimizer_initialized:
            self.mod.init_optimizer(kvstore=self.kvstore, optimizer=self.optimizer)
            if self._pending_states is not None:
                self._set_optimizer_states(self._pending_states)
                self._pending_states = None

    def _updater(self):
        """The updater holding the SGD momentum, or None where the kvstore servers hold it
        (dist_sync: it never reaches a worker)."""
        mod = self.mod._curr_module
        if mod._update_on_kvstore:
            return getattr(mod._kvstore, "_updater", None)
        return mod._updater

    def _state_keys(self) -> dict:
        """Parameter name -> the updater's keys for it. With one device (or MXNET_UPDATE_ON_KVSTORE=0)
        the module updates with keys index * devices + device; on the kvstore (several devices,
        the default) the key is the name. A checkpoint stores names, so a run resumed with
        another --ctx count finds its momentum."""
        mod = self.mod._curr_module
        names = mod._exec_group.param_names
        if mod._update_on_kvstore:
            return {n: [n] for n in names}
        return {n: [i * self.P + k for k in range(self.P)] for i, n in enumerate(names)}

    def optimizer_states(self):
        """The optimizer's per-weight states (the SGD momentum) as 'n:<parameter name>' ->
        NDArray, for a checkpoint; None where this process cannot read them (dist_sync)."""
        if not self.mod.optimizer_initialized:
            return self._pending_states
        updater = self._updater()
        if updater is None:
            return None
        out = {}
        for name, keys in self._state_keys().items():
            st = updater.states.get(keys[0])  # the devices' copies are equal (the summed gradient)
            if st is None:  # not updated yet, or no momentum
                continue
            if not isinstance(st, mx.nd.NDArray):
                raise TypeError(f"optimizer state of {name!r} is a {type(st).__name__}, not one NDArray")
            out[f"n:{name}"] = st.copyto(mx.cpu())
        return out

    def load_optimizer_states(self, states: dict) -> None:
        """Continue from :meth:`optimizer_states` of a checkpoint (applied at the first step,
        when the optimizer exists)."""
        if self.mod.optimizer_initialized:
            self._set_optimizer_states(states)
        else:
            self._pending_states = dict(states)

    def _set_optimizer_states(self, states: dict) -> None:
        updater = self._updater()
        if updater is None:
            return
        keys = self._state_keys()
        names = list(keys)
        by_index = _index_keys({int(k[2:]): v for k, v in states.items() if k.startswith("i:") and k[2:].isdigit()},
                               names, self._param_shapes())
        matched = 0
        for saved, value in states.items():
            kind, _, key = saved.partition(":")
            # "i:N" / "s:NAME": the updater's own keys, as the first checkpoints stored them
            name = by_index.get(int(key)) if kind == "i" and key.isdigit() else key
            if name not in keys:
                continue
            matched += 1
            for j, k in enumerate(keys[name]):
                updater.states[k] = value if j == 0 else value.copy()
                updater.states_synced[k] = False  # moved to the weight's device at its next update
        if states and not matched:
            warn(f"none of the checkpoint's {len(states)} optimizer states names a parameter of this network: "
                 "the SGD momentum starts again from zero")

    def _param_shapes(self) -> dict:
        mod = self.mod._curr_module
        return {n: tuple(a[0].shape) for n, a in zip(mod._exec_group.param_names, mod._exec_group.param_arrays)}

    def _key(self, bucket, n_rois):
        h, w = self.policy.shapes[bucket]
        return (h, w, n_rois)

    def _data_shapes(self, key):
        h, w, r = key
        return [mx.io.DataDesc("data", (self.P, 3, h, w)), mx.io.DataDesc("rois", (self.P, r, 5)),
                mx.io.DataDesc("domain_mask", (self.P, r, self.n_domains))]

    def _label_shapes(self, key):
        return [mx.io.DataDesc(n, (self.P, key[2])) for n in self.label_names]

    def _count_bind(self, key):
        if key not in self.bound_keys:
            self.bound_keys.append(key)
            self.binds += 1

    def set_params(self, params: dict) -> None:
        if self.mod.optimizer_initialized:
            raise RuntimeError("set_params() must come before the first step(): the kvstore holds the weights from then on")
        arg, aux = self.mod.get_params()
        for k, v in params.items():
            if k in arg:
                if arg[k].shape != v.shape:
                    raise ValueError(f"{k}: shape {v.shape} does not match the network's {arg[k].shape}")
                arg[k] = mx.nd.array(v)
        self.mod.set_params(arg, aux)

    def _batch(self, data, rois_xywh, labels, domain):
        p, r = rois_xywh.shape[:2]
        rois = np.zeros((p, r, 5), np.float32)
        rois[..., 1:3] = rois_xywh[..., :2]
        rois[..., 3:5] = rois_xywh[..., :2] + rois_xywh[..., 2:]
        mask = np.zeros((p, r, self.n_domains), np.float32)
        mask[..., domain] = 1.0
        label = [mx.nd.array(labels)]
        if self.instance:  # positives name their domain; negatives are ignored (-1)
            label.append(mx.nd.array(np.where(labels > 0, float(domain), -1.0).astype(np.float32)))
        return mx.io.DataBatch(data=[mx.nd.array(data), mx.nd.array(rois), mx.nd.array(mask)],
                               label=label, bucket_key=(data.shape[2], data.shape[3], r),
                               provide_data=self._data_shapes((data.shape[2], data.shape[3], r)),
                               provide_label=self._label_shapes((data.shape[2], data.shape[3], r)))

    def step(self, batch) -> dict:
        """Mining pass over ``mine_from`` negatives, then one SGD step on 32 + 96."""
        self._init_optimizer()
        P = self.P
        mine = self._batch(batch.data, batch.neg, np.zeros((P, batch.neg.shape[1]), np.float32), batch.domain)
        self._count_bind(mine.bucket_key)
        self.mod.forward(mine, is_train=False)
        prob = self.mod.get_outputs()[0].asnumpy().reshape(P, -1, 2)[..., 1]
        hard = np.argsort(-prob, axis=1, kind="stable")[:, : self.batch_neg]
        neg = np.take_along_axis(batch.neg, hard[..., None], axis=1)
        rois = np.concatenate([batch.pos[:, : self.batch_pos], neg], axis=1)
        train = self._batch(batch.data, rois, self.labels, batch.domain)
        self._count_bind(train.bucket_key)
        self.mod.forward_backward(train)
        self.mod.update()
        outputs = self.mod.get_outputs()
        out = outputs[0].asnumpy().reshape(P, -1, 2)
        acc = float(np.mean((out[..., 1] > 0.5) == (self.labels == 1)))
        stats = {"loss": softmax_loss(out, self.labels), "acc": acc,
                 "hard_neg_prob": float(np.take_along_axis(prob, hard, 1).mean())}
        if self.instance:  # NLL of the own domain among all branches, positives only
            inst = outputs[1].asnumpy().reshape(P, -1, self.n_domains)[:, : self.batch_pos, batch.domain]
            stats["instance_loss"] = float(-np.mean(np.log(np.clip(inst, 1e-12, None))))
        return stats

    def evaluate(self, batch):
        """Softmax outputs (P, R, 2) and labels for positives and a random (not mined)
        negative subset of ``batch``: the held-out measure."""
        rois = np.concatenate([batch.pos[:, : self.batch_pos], batch.neg[:, : self.batch_neg]], axis=1)
        b = self._batch(batch.data, rois, self.labels, batch.domain)
        self._count_bind(b.bucket_key)
        self.mod.forward(b, is_train=False)
        return self.mod.get_outputs()[0].asnumpy().reshape(self.P, -1, 2), self.labels

    def params(self) -> dict:
        arg, _ = self.mod.get_params()
        return {k: v.asnumpy() for k, v in arg.items()}

    def finish(self) -> None:
        """Wait until this process's last update has gone through the kvstore. Every rank must
        call it after its last step: ``update()`` only queues the gradient pushes, and with
        ``dist_sync`` the servers answer each key's push-pull only once every worker has pushed
        it. A worker that exits with pushes still queued never sends them (MXNet's engine stops
        at interpreter exit), so rank 0, reading the final weights for the checkpoint, would
        wait for them forever while that worker waits for rank 0 in the kvstore's closing
        barrier."""
        mx.nd.waitall()


HELDOUT_SEED = 12345


def heldout_loss(trainer, sampler, n_batches: int, seed: int = HELDOUT_SEED) -> float:
    """Mean loss on held-out sequences, each scored with the branch that fits it best. The
    sampler starts afresh from ``seed`` each time: every evaluation (and every resumed run)
    scores the same held-out batches, so the curve follows the weights, not the draw."""
    sampler.reseed(seed)
    losses = []
    for i in range(n_batches):
        batch = sampler.sample(i % len(sampler.domains))
        best = None
        for d in range(trainer.n_domains):
            batch.domain = d
            loss = softmax_loss(*trainer.evaluate(batch))
            best = loss if best is None else min(best, loss)
        losses.append(best)
    return float(np.mean(losses))


KVSTORES = ("local", "device", *DIST_KVSTORES)

# Options that define what a run trains; a resumed run must keep them.
RECIPE = ("extractor", "target_size", "roi_shrink", "roi_offset", "instance_loss", "lr", "fc_lr_mult", "freeze", "mine_from",
          "holdout", "heldout_batches", "seed")


_UNSET = object()


def given_options(parser, argv, names) -> set:
    """Which of ``names`` the command line gave (abbreviations included): parsed again onto a
    namespace that holds a marker for each, which argparse leaves where nothing is given."""
    probe = argparse.Namespace(**{n: _UNSET for n in names})
    parser.parse_args(argv, namespace=probe)
    return {n for n in names if getattr(probe, n) is not _UNSET}


def take_recipe(config: dict, args, parser, given) -> None:
    """``--resume``: recipe options left out of the command take the checkpoint's values
    (they used to count as their defaults and be refused as changed)."""
    recorded = config.get("training", {})
    for name in RECIPE:
        if name not in given:
            setattr(args, name, recorded.get(name, parser.get_default(name)))


def resume_mismatch(config: dict, args, parser) -> str | None:
    """The first recipe option given differently from the checkpoint's run, as
    '--name NEW (checkpoint: OLD)', or None. Options a checkpoint predates count as their
    default."""
    recorded = config.get("training", {})
    for name in RECIPE:
        old = recorded.get(name, parser.get_default(name))
        new = getattr(args, name)
        if name == "holdout":  # a set of names: the order they are given in does not matter
            same = holdout_names(old) == holdout_names(new)
        else:
            same = old == new
        if not same:
            return f"--{name.replace('_', '-')} {new} (checkpoint: {old})"
    return None


def holdout_names(text) -> set:
    """--holdout's sequence names."""
    return {h.strip() for h in str(text or "").split(",") if h.strip()}


def mx_seed(seed: int, rank: int, iteration: int) -> int:
    """MXNet's seed (dropout masks) for the step at ``iteration``: MXNet's generator state
    cannot be saved, so it is re-seeded before every step, and a run resumed at any
    iteration draws the masks the uninterrupted run draws."""
    digest = hashlib.sha256(f"train_mx {seed} {rank} {iteration}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def sampler_seed(seed: int, rank: int):
    """The batch sampler's seed of a fresh run (each worker its own draws)."""
    return (seed * 1000 + 7919 * rank) % 2 ** 64


def check_sequence_names(seqs, holdout) -> None:
    """Sequences are known by their folder names (--holdout, the fc6 branches, the model's
    config, feature_stats): refuse two of one name and a --holdout name none has."""
    names = [Path(s).name for s in seqs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        paths = [str(s) for s in seqs if Path(s).name == twice[0]]
        raise TrackerInputError(f"--sequences: two sequences named {twice[0]} ({', '.join(paths)}); sequences are "
                                "known by their folder names, rename one")
    unknown = sorted(holdout - set(names))
    if unknown:
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        raise TrackerInputError(f"--holdout names {', '.join(unknown)}, not among the --sequences ({shown}); "
                                "give folder names of --sequences")


def check_resumed_domains(resumed, names, ckpt) -> None:
    """A resumed run must train the checkpoint's sequences, in its order: each has its own fc6
    branch. Checkpoints that predate the recorded list are checked by their branch count."""
    recorded = resumed.config.get("training", {}).get("domains")
    fc6 = resumed.params.get("fc6_weight")
    if recorded is not None:
        same = list(recorded) == list(names)
    else:
        same = fc6 is None or fc6.shape[0] == 2 * len(names)
        recorded = [f"{fc6.shape[0] // 2} sequences" if fc6 is not None else "?"]
    if not same:
        raise TrackerInputError(f"--resume: the checkpoint in {ckpt} trains {', '.join(recorded)}, these --sequences "
                                f"and --holdout give {', '.join(names)}; resume with the checkpoint's sequences or "
                                "train into a new --out")


def check_save_model_free(save_model, out) -> None:
    """--save-model may replace only a model this same run (its --out) wrote, as a resumed
    run does: any other model there (one's previous recipe, a copy of the shipped one) would
    be lost at the end of training."""
    folder = Path(save_model).expanduser()
    cfg_path = folder / "config.json"
    if not (folder / "manifest.json").exists() and not cfg_path.exists():
        return
    try:
        trained = json.loads(cfg_path.read_text()).get("training")
    except (OSError, ValueError, AttributeError):
        trained = None
    trained = trained if isinstance(trained, dict) else {}
    # the run that wrote it (out_abs is newer than out); a model with neither is no run's
    recorded = trained.get("out") if isinstance(trained.get("out"), str) else None
    owner = trained.get("out_abs") or (str(Path(recorded).resolve()) if recorded else None)
    if owner == str(Path(out).expanduser().resolve()):
        return
    where = f" (trained into {recorded})" if recorded else ""
    raise TrackerInputError(f"--save-model {save_model} already holds a model{where}; give a new folder, "
                            "or remove that one to replace it")


def frozen(names, prefixes) -> list:
    """The parameters of ``names`` that --freeze ``prefixes`` keep fixed (fire2 takes fire2_*)."""
    return [n for n in names if any(n.startswith(f + "_") or n == f for f in prefixes)]


def all_finite(params: dict) -> bool:
    return all(np.isfinite(v).all() for v in params.values())


def check_freeze(freeze, extractor) -> None:
    """Each --freeze prefix must name a layer: a misspelt one froze nothing, silently (not
    even the extractor's default layers, which any --freeze replaces)."""
    if freeze is None:
        return
    names = [n for n in network.training_symbol(extractor, 1).list_arguments() if n.endswith("_weight")]
    layers = sorted({n[: -len("_weight")] for n in names})
    unknown = [f for f in freeze.split(",") if f and not frozen(names, [f])]
    if unknown:
        raise TrackerInputError(f"--freeze {unknown[0]} names no layer of {extractor}; its layers are "
                                f"{', '.join(layers)} (a prefix like fire2 takes every layer it begins)")


def check_save_model_place(save_model, out) -> None:
    """--save-model beside the run, never in it: written into --out's checkpoint it replaced
    the checkpoint with a model (no fc6 branches, no optimizer state, no sampler state) and a
    resume restarted from that; in --out itself or a sequence folder its files mix with others."""
    folder = Path(save_model).expanduser().resolve()
    out = Path(out).expanduser().resolve()
    if folder == out or out / checkpoint.CHECKPOINT in (folder, *folder.parents):
        raise TrackerInputError(f"--save-model {save_model} is inside --out {out}'s run; give a folder of its own")
    if looks_like_sequence(folder):
        raise TrackerInputError(f"--save-model {save_model} is a sequence folder; give a folder of its own")


def model_config(extractor, policy, args=None, roi_shrink: float = 0.0, roi_offset: float = 0.0) -> dict:
    return {
        "extractor": extractor,
        "roi_shrink": float(roi_shrink),
        "roi_offset": float(roi_offset),
        "roi_sample_ratio": ROI_SAMPLE_RATIO,  # network.roi_pool's default, which training pools with
        "feature_channels": 512 if extractor == "vggm" else 256,
        "feature_scale": FEATURE_SCALE[extractor],
        "mean_bgr": MEAN[extractor],
        "buckets": policy.to_dict(),
        "training": args or {},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train_mx.train", description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", nargs="+", default=None,
                    help="sequence folders (OTB/VOT layout); default: ../shared/data/sequences/*")
    ap.add_argument("--holdout", default="", help="comma-separated sequence names kept out of training")
    ap.add_argument("--extractor", choices=network.EXTRACTORS, default="squeezenet")
    ap.add_argument("--pretrained", default=None,
                    help="squeezenet .h5 or imagenet-vgg-m.mat; default: ../shared/weights/squeezenet_v1.1_notop.h5 for squeezenet, none for vggm")
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--epoch-size", type=int, default=100, help="iterations per logged epoch / checkpoint")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--fc-lr-mult", type=float, default=10.0)
    ap.add_argument("--freeze", default=None, help="comma-separated layer prefixes not trained (default per extractor)")
    ap.add_argument("--mine-from", type=int, default=1024)
    ap.add_argument("--target-size", type=float, default=64.0,
                    help="target's side in patch pixels (the bucket policy's scale; recorded in the model)")
    ap.add_argument("--roi-shrink", type=float, default=0.0,
                    help="patch pixels taken off each side of every RoI before pooling, as RT-MDNet shrinks RoIs by the receptive field (recorded in the model; 0 = the shipped model)")
    ap.add_argument("--roi-offset", type=float, default=0.0,
                    help="patch pixels added to RoI coordinates before pooling; %g centres RoIAlign's bins on the "
                         "feature cells' receptive fields (recorded in the model; 0 = the shipped model)" % network.RF_OFFSET)
    ap.add_argument("--instance-loss", type=float, default=0.0,
                    help="weight of RT-MDNet's instance embedding loss (0 = off, the shipped model; RT-MDNet uses 0.1)")
    ap.add_argument("--ctx", default="cpu:0", help="cpu:0,cpu:1 or gpu:0,gpu:1 (data parallel)")
    ap.add_argument("--kvstore", default="local", choices=KVSTORES, help="dist_*: run by train_mx.launch")
    ap.add_argument("--out", default="runs/train", help="checkpoint folder")
    ap.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heldout-batches", type=int, default=20)
    ap.add_argument("--save-model", default=None, help="write the final model folder here")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    given = given_options(ap, argv, RECIPE)
    run = {"out": Path(args.out), "saved": None}  # saved: the iteration the checkpoint in --out holds
    stop = StopRequest()
    old = stop.install()  # None off the main thread: signals stay as they are
    try:
        return _train(args, ap, stop if old is not None else None, run, given)
    except TrackerInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a folder that cannot be written
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}{_kept(run)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # a second signal, or one before training started
        name = str(e) if str(e) in StopRequest.SIGNALS else "SIGINT"
        print(f"interrupted ({name}){_kept(run) or ' before the first checkpoint'}", file=sys.stderr)
        return 128 + getattr(signal, name)
    finally:
        if old is not None:
            stop.deferred = False
            StopRequest.restore(old)


def _kept(run) -> str:
    """What a run cut short leaves: the checkpoint to resume from (as it is on disk: a stop
    in the middle of a swap leaves the new one or the previous one)."""
    if run["saved"] is None:
        return ""
    saved = checkpoint.held_iteration(run["out"])
    return (f"; the checkpoint in {run['out'] / checkpoint.CHECKPOINT} holds iteration "
            f"{run['saved'] if saved is None else saved}: rerun the same command with --resume to continue from it")


def _check_values(args) -> None:
    """Refuse a value training cannot use, or one the runtime would refuse in the model it
    writes (a negative --roi-shrink trained to the end, then no tool could load the model)."""
    positive = "must be positive"
    for flag, ok, want in (
            ("--iterations", args.iterations >= 1, positive), ("--epoch-size", args.epoch_size >= 1, positive),
            ("--target-size", args.target_size > 0, positive),
            ("--heldout-batches", args.heldout_batches >= 1 or not args.holdout, positive),
            ("--lr", args.lr > 0, positive), ("--fc-lr-mult", args.fc_lr_mult > 0, positive),
            ("--instance-loss", args.instance_loss >= 0, "must be >= 0 (0 = off)"),
            ("--roi-shrink", 0 <= args.roi_shrink < args.target_size / 2,
             f"must be >= 0 and below half --target-size ({args.target_size / 2:g}: the target's RoI would vanish)"),
            ("--roi-offset", abs(args.roi_offset) < network.STRIDE,
             f"must be between -{network.STRIDE} and {network.STRIDE} (a feature cell's span)")):
        value = getattr(args, flag[2:].replace("-", "_"))
        if not ok or not math.isfinite(value):
            raise TrackerInputError(f"{flag} {want}, got {value}")


def _check_recipe(args) -> None:
    _check_values(args)
    if args.mine_from < BATCH_NEG:
        raise TrackerInputError(f"--mine-from must be at least the {BATCH_NEG} negatives of a minibatch, "
                                f"got {args.mine_from}")
    check_freeze(args.freeze, args.extractor)


def _startup_checks(args, ap, given=RECIPE):
    """Everything a user can get wrong, checked before data, network or checkpoint is touched:
    returns (resumed checkpoint model or None, its state or None, its optimizer states or None,
    pretrained weights path or None, those weights or None). The weights are read here: a
    wrong file is refused before the data are loaded and the network bound."""
    if not args.resume:  # a resumed run's recipe is checked once the checkpoint's values are in
        _check_recipe(args)
    parse_ctx(args.ctx)
    if args.kvstore in DIST_KVSTORES and "DMLC_ROLE" not in os.environ:
        raise TrackerInputError(f"--kvstore {args.kvstore} runs under python -m train_mx.launch, which starts the "
                                "scheduler, servers and workers; use it, or --kvstore local")
    check_output_folder(args.out, "--out")
    if args.save_model:
        check_output_folder(args.save_model, "--save-model")
        check_save_model_place(args.save_model, args.out)
        check_save_model_free(args.save_model, args.out)
    out = Path(args.out)
    ckpt = out / checkpoint.CHECKPOINT
    resumed = state = optimizer = pre = weights = None
    if not args.resume and checkpoint.holds_run(out):
        raise TrackerInputError(f"--out {out} already holds a training run; pass --resume to continue it, or give "
                                "a new --out (or remove that folder to start over)")
    if args.resume:
        checkpoint.recover(out)  # a swap a kill cut in two
        if not (ckpt / "manifest.json").is_file():
            raise TrackerInputError(f"--resume: no checkpoint in {ckpt}; pass the --out of the run to resume, "
                                    "or drop --resume to start afresh")
        resumed, state, optimizer = checkpoint.read(out)
        take_recipe(resumed.config, args, ap, given)
        _check_recipe(args)  # with the checkpoint's values (its --target-size bounds --roi-shrink)
        changed = resume_mismatch(resumed.config, args, ap)
        if changed:
            raise TrackerInputError(f"{changed} differs from the checkpoint in {ckpt}; resume with the "
                                    "checkpoint's values or train into a new --out")
    else:
        pre = args.pretrained
        if pre is None and args.extractor == "squeezenet":
            pre = str(default_squeezenet_path())
        if pre and not (Path(pre).is_file() or Path(pre + ".mat").is_file()):  # loadmat adds .mat
            raise TrackerInputError(f"pretrained weights {pre} not found; pass --pretrained FILE "
                                    "(squeezenet .h5 or imagenet-vgg-m.mat), or set MDTRACK_SHARED to the shared "
                                    "folder that holds weights/")
        if pre:
            weights = load_pretrained(args.extractor, pre)
    return resumed, state, optimizer, pre, weights


def _train(args, ap, stop, run, given=RECIPE) -> int:
    from tqdm import tqdm

    # A refused run should cost nothing: check before the data and the network are built.
    resumed, state, optimizer, pre, pretrained = _startup_checks(args, ap, given)
    out = Path(args.out)
    ckpt = out / checkpoint.CHECKPOINT
    if state is not None:
        run["saved"] = int(state["iteration"])
    seqs, files = without_files(args.sequences or [])
    for f in files:
        warn(f"skipping {f}: a file, not a sequence folder")
    if not seqs and not SHARED_SEQUENCES.is_dir():
        raise TrackerInputError(f"no sequences ({SHARED_SEQUENCES} is absent): pass --sequences DIR ..., or set "
                                "MDTRACK_SHARED to the shared folder that holds data/sequences")
    seqs = seqs or sorted(str(p) for p in SHARED_SEQUENCES.iterdir() if p.is_dir())
    holdout = holdout_names(args.holdout)
    check_sequence_names(seqs, holdout)
    policy = BucketPolicy(target_size=args.target_size)
    domains = load_domains([s for s in seqs if Path(s).name not in holdout])
    held = load_domains([s for s in seqs if Path(s).name in holdout]) if holdout else []
    if not domains:
        print("error: no training sequences with usable ground truth (each needs at least 10 frames with a "
              "box inside the image); check --sequences and --holdout", file=sys.stderr)
        return 2
    if resumed is not None:
        check_resumed_domains(resumed, [d.name for d in domains], ckpt)
    contexts = parse_ctx(args.ctx)
    freeze = FREEZE[args.extractor] if args.freeze is None else [f for f in args.freeze.split(",") if f]
    trainer = Trainer(args.extractor, len(domains), policy, contexts, lr=args.lr, fc_lr_mult=args.fc_lr_mult,
                      freeze=freeze, kvstore=args.kvstore, mine_from=args.mine_from, seed=args.seed,
                      roi_shrink=args.roi_shrink, instance_weight=args.instance_loss, roi_offset=args.roi_offset)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrackerInputError(f"--out {out} cannot be created ({e.strerror or e}); give a writable folder") from None
    rank = trainer.kvstore.rank if not isinstance(trainer.kvstore, str) else 0
    sampler = BatchSampler(domains, policy, MEAN[args.extractor], n_neg=args.mine_from, patches=len(contexts),
                           seed=sampler_seed(args.seed, rank))
    start, log, seconds = 0, [], 0.0
    if resumed is not None:
        trainer.set_params(resumed.params)
        start, log = int(state["iteration"]), list(state["log"])
        seconds = float(state.get("seconds", sum(e.get("seconds", 0.0) for e in log)))
        if state.get("sampler") is not None and rank == 0:  # the draws continue where they stopped
            sampler.set_state(state["sampler"])
        else:  # an older checkpoint, or another worker of a dist_sync run (only rank 0 writes)
            sampler.reseed(np.random.SeedSequence([args.seed % 2 ** 32, rank, start, 0x7E5]))
        if optimizer is not None:
            trainer.load_optimizer_states(optimizer)
        else:
            warn(f"{ckpt} holds no optimizer state (written by an older version, or by a dist_sync run, whose "
                 "servers keep it): the SGD momentum starts again from zero")
        print(f"resumed from {ckpt} at iteration {start}")
        if args.iterations <= start:
            also = "; --save-model gets the checkpoint's weights" if args.save_model else ""
            warn(f"--iterations {args.iterations} is not above the checkpoint's iteration {start}: nothing to "
                 f"train{also}")
    else:
        if pretrained is not None:
            trainer.set_params(pretrained)
            print(f"initialised {len(pretrained)} extractor tensors from {pre}")
    held_sampler = BatchSampler(held, policy, MEAN[args.extractor], n_neg=args.mine_from, patches=len(contexts),
                                seed=HELDOUT_SEED) if held else None
    config = model_config(args.extractor, policy, {k: v for k, v in vars(args).items()}, args.roi_shrink,
                          args.roi_offset)
    # absolute: feature_stats (and anyone) reads them from wherever it runs
    # not resolved: a link keeps its name, which is the sequence's name (its fc6 branch, --holdout)
    config["training"]["sequences"] = [os.path.abspath(Path(s).expanduser()) for s in seqs]
    config["training"]["domains"] = [d.name for d in domains]  # in every checkpoint: --resume checks them
    config["training"]["out_abs"] = str(out.expanduser().resolve())  # --save-model replaces only this run's model
    if held_sampler is not None and state is not None:  # frames the held-out draws left out before
        held_sampler.drop(state.get("heldout_dropped") or {})
    t_start = time.time()
    it = start
    stopped = None  # the signal's name once one asked to stop

    def save(params=None):
        """The checkpoint of iteration ``it``; ``run["saved"]`` follows it from the swap on."""
        st = {"iteration": it, "log": log, "seconds": seconds + time.time() - t_start, "sampler": sampler.state()}
        if held_sampler is not None:
            st["heldout_dropped"] = held_sampler.dropped()
        checkpoint.write(out, config, trainer.params() if params is None else params, st, trainer.optimizer_states(),
                         swapped=lambda i: run.__setitem__("saved", i))

    made_up = False
    if (resumed is not None and held_sampler is not None and log and log[-1].get("iteration") == start
            and "heldout_loss" not in log[-1]
            and (start % (args.epoch_size * 5) == 0 or start >= args.iterations)):
        # the run stopped where the held-out loss was due (a stop skips it): score these weights now
        log[-1]["heldout_loss"] = heldout_loss(trainer, held_sampler, args.heldout_batches)
        print(f"heldout {log[-1]['heldout_loss']:.4f} at iteration {start} (due when the run stopped)")
        made_up = True
    bar = tqdm(total=args.iterations, initial=start, disable=args.quiet or not sys.stderr.isatty(), unit="it")
    if stop is not None:
        stop.deferred = True  # from here a first signal stops after the step in hand, with a checkpoint
    while it < args.iterations:
        if stop is not None and stop.signum is not None:  # came during the last checkpoint: it is written
            stopped = signal.Signals(stop.signum).name
            break
        t0 = time.time()
        stats = []
        # to the next multiple of --epoch-size (a run stopped mid-epoch realigns)
        n = min(args.epoch_size - it % args.epoch_size, args.iterations - it)
        for _ in range(n):
            mx.random.seed(mx_seed(args.seed, rank, it))  # dropout: a resumed run draws the same masks
            stats.append(trainer.step(sampler.sample()))
            it += 1
            bar.update(1)
            if stop is not None and stop.signum is not None:
                stopped = signal.Signals(stop.signum).name
                break
        entry = {"iteration": it, "loss": float(np.mean([s["loss"] for s in stats])),
                 "acc": float(np.mean([s["acc"] for s in stats])), "seconds": time.time() - t0,
                 "binds": trainer.binds}
        if trainer.instance:
            entry["instance_loss"] = float(np.mean([s["instance_loss"] for s in stats]))
        params = trainer.params()
        # Every rank decides alike (dist_sync workers pull the same weights): one that went on
        # alone would wait for the others' gradients forever. The last step's update may have
        # made the weights NaN while its loss, computed before it, was finite.
        if not math.isfinite(entry["loss"]) or not all_finite(params):
            # not saved: the checkpoint keeps the last finite weights (a NaN one replaced them
            # and nothing could resume or track from it)
            bar.close()
            trainer.finish()
            kept = (f"the checkpoint in {ckpt} keeps iteration {run['saved']}, the last one with finite weights"
                    if run["saved"] is not None else "nothing was saved")
            print(f"error: training diverged by iteration {it} (loss {entry['loss']:.4g}): {kept}; train into a "
                  "new --out with a lower --lr", file=sys.stderr)
            return 1
        if held_sampler is not None and stopped is None and (it % (args.epoch_size * 5) == 0 or it >= args.iterations):
            entry["heldout_loss"] = heldout_loss(trainer, held_sampler, args.heldout_batches)
        log.append(entry)
        msg = (f"epoch {len(log):3d} iter {it:6d} loss {entry['loss']:.4f} acc {entry['acc']:.3f} "
               f"time {entry['seconds']:.1f}s binds {trainer.binds}")
        if "instance_loss" in entry:
            msg += f" inst {entry['instance_loss']:.4f}"
        if "heldout_loss" in entry:
            msg += f" heldout {entry['heldout_loss']:.4f}"
        bar.write(msg) if not bar.disable else print(msg, flush=True)
        if rank == 0:
            save(params)
    bar.close()
    if made_up and it == start and rank == 0:  # nothing trained: the log keeps the made-up held-out loss
        save()
    trainer.finish()  # every rank, before rank 0 reads the final weights (see Trainer.finish)
    total = seconds + time.time() - t_start
    if rank == 0:
        params = trainer.params()
        # fc6 branches belong to the training sequences; the tracker starts a fresh fc6.
        params = {k: v for k, v in params.items() if not k.startswith("fc6")}
        config["training"]["iteration"] = it  # reached (--iterations is what was asked)
        config["training"]["seconds"] = total  # every session of the run, resumed ones included
        config["training"]["heldout"] = [d.name for d in held]  # those --holdout left usable
        if args.save_model and run["saved"] is not None:  # not for a run stopped before its first step
            save_model(args.save_model, config, params)  # a full disk: an OSError naming the file
            if stopped is None:
                print(f"model written to {args.save_model} (next: python -m train_mx.feature_stats --model "
                      f"{args.save_model}; without its statistics the tracker factors fc4 less well)")
        (out / "final_params.json").write_text(json.dumps({"binds": trainer.binds, "keys": [list(k) for k in trainer.bound_keys]}))
    if stopped is not None:
        if rank != 0:
            kept = "rank 0 writes the checkpoint"
        elif run["saved"] is None:
            kept = "nothing was saved"
        else:
            kept = f"the checkpoint in {ckpt}" + (f" and --save-model {args.save_model} hold it" if args.save_model
                                                  else " holds it")
        resume = "; rerun the same command with --resume to continue" if run["saved"] is not None or rank else ""
        print(f"interrupted ({stopped}) at iteration {it} of {args.iterations}: {kept}{resume}", file=sys.stderr)
        return 128 + getattr(signal, stopped)
    print(f"trained {it - start} iterations in {(time.time() - t_start) / 60:.1f} min (iteration {it}, "
          f"{total / 60:.1f} min in all); binds {trainer.binds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
