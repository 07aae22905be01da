"""MXNet (oneDNN on CPU, cuDNN on GPU) reference feature backend."""
from __future__ import annotations

import numpy as np

from .base import FeatureBackend


def mx_context(device: str):
    import mxnet as mx

    from ..devices import device_index, parse_device
    from ..errors import TrackerInputError

    device = parse_device(device)
    if device == "cpu":
        return mx.cpu()
    idx = device_index(device)
    if mx.context.num_gpus() <= idx:
        raise TrackerInputError(f"device {device!r} asked for, but MXNet sees {mx.context.num_gpus()} GPU(s); use --device cpu (Tracker(device='cpu'))")
    return mx.gpu(idx)


class MXNetBackend(FeatureBackend):
    """One bound executor per bucket, created and warmed up at construction. A frame runs
    one bucket, so the executors share the largest one's memory for intermediate results,
    as MXNet's BucketingModule does (about 55 MB less per tracker, the same features).

    :meth:`extract_any` is the unbucketed baseline the benchmarks compare against: it binds
    a fresh executor for every new patch shape, as the original prototype did.
    """

    name = "mxnet"

    def __init__(self, model, device: str = "cpu", warmup: bool = True):
        import mxnet as mx

        from train_mx import network

        super().__init__(model, device)
        self.ctx = mx_context(device)
        self.symbol, _ = network.extractor(model.extractor, feature_scale=model.feature_scale)
        self._params = {k: mx.nd.array(v, ctx=self.ctx) for k, v in model.extractor_params().items()}
        self.binds = 0
        self._executors = {}
        largest_first = sorted(range(len(self.policy.shapes)), key=lambda b: -np.prod(self.policy.shapes[b]))
        pool = None
        for b in largest_first:
            ex = self._bind(self.policy.shapes[b], shared=pool)
            pool = pool or ex
            if warmup:
                ex.forward(is_train=False)
                ex.outputs[0].wait_to_read()
            self._executors[b] = ex

    def _bind(self, hw, shared=None):
        import mxnet as mx

        args = dict(self._params)
        args["data"] = mx.nd.zeros((1, 3) + tuple(hw), ctx=self.ctx)
        self.binds += 1
        return self.symbol.bind(self.ctx, args=args, grad_req="null", shared_exec=shared)

    def extract(self, bucket: int, patch: np.ndarray) -> np.ndarray:
        self._check(bucket, patch)
        ex = self._executors[bucket]
        ex.arg_dict["data"][:] = patch
        ex.forward(is_train=False)
        return ex.outputs[0].asnumpy()

    def extract_any(self, patch: np.ndarray) -> np.ndarray:
        """Extract for an arbitrary shape, binding a new executor per new shape (baseline)."""
        key = tuple(patch.shape[2:])
        ex = self._executors.get(key)
        if ex is None:
            ex = self._executors[key] = self._bind(key)
        ex.arg_dict["data"][:] = patch
        ex.forward(is_train=False)
        return ex.outputs[0].asnumpy()
