"""MXNet symbols of the tracker network: conv extractor, RoIAlign, fc4 -> fc5 -> fc6.

The graph is split where deployment splits it: the extractor (data -> feature map, stride
8) is what gets exported to ONNX / TVM; RoIAlign and the fc head stay in MXNet, where the
head is fine-tuned online. Training joins the pieces into one graph with one fc6 branch per
training sequence (multi-domain learning).
"""
from __future__ import annotations

import mxnet as mx

from runtime.model import ROI_SAMPLE_RATIO

EXTRACTORS = ("vggm", "squeezenet")
STRIDE = 8
POOLED = (3, 3)
FC_DIM = 512
# Feature cell m of both extractors is centred on patch pixel 8m (odd kernels with 'same'
# padding, three stride-2 layers), at x = 8m + 0.5 in the continuous coordinates RoIs are given
# in; RoIAlign(aligned=True) takes it to be at 8m + 4, the centre of its 8-pixel span. RoIs moved
# by this much pool the cells whose receptive fields are centred under them (models record the
# offset they were trained with, ``roi_offset``; the shipped model predates it and pools with 0).
RF_OFFSET = STRIDE / 2 - 0.5


def _conv(x, name, channels, kernel, stride=1, pad=0, dilate=1):
    x = mx.sym.Convolution(x, num_filter=channels, kernel=(kernel, kernel),
                           stride=(stride, stride), pad=(pad, pad), dilate=(dilate, dilate), name=name)
    return mx.sym.Activation(x, act_type="relu", name=f"{name}_relu")


def _vggm(data):
    """RT-MDNet's VGG-M conv1-3: no pool after conv2, conv3 dilated by 3, stride 8.

    Padding is 'same' so that an H x W patch gives an H/8 x W/8 map for every bucket.
    """
    x = _conv(data, "conv1", 96, 7, stride=2, pad=3)
    x = mx.sym.LRN(x, nsize=5, alpha=1e-4, beta=0.75, knorm=2, name="norm1")
    x = mx.sym.Pooling(x, kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type="max", name="pool1")
    x = _conv(x, "conv2", 256, 5, stride=2, pad=2)
    x = mx.sym.LRN(x, nsize=5, alpha=1e-4, beta=0.75, knorm=2, name="norm2")
    x = _conv(x, "conv3", 512, 3, stride=1, pad=3, dilate=3)
    return x, 512


def _fire(x, name, squeeze, expand):
    s = _conv(x, f"{name}_squeeze1x1", squeeze, 1)
    e1 = _conv(s, f"{name}_expand1x1", expand, 1)
    e3 = _conv(s, f"{name}_expand3x3", expand, 3, pad=1)
    return mx.sym.concat(e1, e3, dim=1, name=f"{name}_concat")


def _squeezenet(data):
    """SqueezeNet v1.1 up to fire5 (stride 8, 256 channels), ImageNet-initialisable."""
    x = _conv(data, "conv1", 64, 3, stride=2, pad=1)
    x = mx.sym.Pooling(x, kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type="max", name="pool1")
    x = _fire(x, "fire2", 16, 64)
    x = _fire(x, "fire3", 16, 64)
    x = mx.sym.Pooling(x, kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type="max", name="pool3")
    x = _fire(x, "fire4", 32, 128)
    x = _fire(x, "fire5", 32, 128)
    return x, 256


def extractor(name: str, data=None, feature_scale: float = 1.0):
    """(feature symbol, channels) for extractor ``name``; input 'data' is (N, 3, H, W).

    ``feature_scale`` multiplies the output so that ImageNet-scale activations (tens to
    hundreds) enter the fc head at about unit scale; it is part of the exported graph.
    """
    if data is None:
        data = mx.sym.Variable("data")
    if name == "vggm":
        feat, c = _vggm(data)
    elif name == "squeezenet":
        feat, c = _squeezenet(data)
    else:
        raise ValueError(f"unknown extractor {name!r}; choose one of {EXTRACTORS}")
    if feature_scale != 1.0:
        feat = mx.sym._internal._mul_scalar(feat, scalar=float(feature_scale), name="feature_scale")
    return feat, c


def roi_pool(feat, rois, sample_ratio: int = ROI_SAMPLE_RATIO, shrink: float = 0.0, offset: float = 0.0):
    """RoIAlign 3x3 at 1/8 scale; rois are (K, 5) rows (batch index, x1, y1, x2, y2) in patch px.

    ``sample_ratio``: bilinear samples per bin side (2 -> 4 per bin); training pools with
    the default and its model config records it (``roi_sample_ratio``), so that tracking
    pools the way training did, or cheaper where measured.
    ``shrink``: pixels taken off each side of every RoI before pooling (at most down to a
    1-px box), as RT-MDNet shrinks RoIs by the receptive field: a stride-8 cell sees about
    63 px of the patch, so an unshrunk 3x3 grid over a 64-px target pools mostly background.
    ``offset``: pixels added to every RoI coordinate (``RF_OFFSET`` centres the bins on the
    receptive fields of the cells they sample).
    Part of the graph, so training and tracking always pool the same way.
    """
    if shrink or offset:
        idx = mx.sym.slice_axis(rois, axis=1, begin=0, end=1)
        lo = mx.sym.slice_axis(rois, axis=1, begin=1, end=3)
        hi = mx.sym.slice_axis(rois, axis=1, begin=3, end=5)
        d = mx.sym.clip((hi - lo - 1.0) * 0.5, 0.0, float(shrink)) if shrink else 0.0
        rois = mx.sym.concat(idx, lo + d + float(offset), hi - d + float(offset), dim=1)
    return mx.sym.contrib.ROIAlign(feat, rois, pooled_size=POOLED, spatial_scale=1.0 / STRIDE,
                                   sample_ratio=int(sample_ratio), aligned=True, name="roi_align")


def fc_head(pooled, n_out: int = 2, dropout: float = 0.5):
    """fc4 -> fc5 -> fc6 on pooled RoI features (K, C, 3, 3) or (K, C*9).

    The per-layer learning rates are not symbol attributes (an optimizer object ignores
    them): offline training sets them in ``train_mx.train.Trainer`` (``lr_mult``), online
    training in ``runtime.head.LR_MULT``.
    """
    x = mx.sym.flatten(pooled, name="flat")
    x = mx.sym.FullyConnected(x, num_hidden=FC_DIM, name="fc4")
    x = mx.sym.Activation(x, act_type="relu", name="fc4_relu")
    if dropout:
        x = mx.sym.Dropout(x, p=dropout, name="drop4")
    x = mx.sym.FullyConnected(x, num_hidden=FC_DIM, name="fc5")
    x = mx.sym.Activation(x, act_type="relu", name="fc5_relu")
    if dropout:
        x = mx.sym.Dropout(x, p=dropout, name="drop5")
    return mx.sym.FullyConnected(x, num_hidden=n_out, name="fc6")


def training_symbol(extractor_name: str, n_domains: int, dropout: float = 0.5, feature_scale: float = 1.0,
                    roi_shrink: float = 0.0, instance_weight: float = 0.0, roi_offset: float = 0.0):
    """Whole multi-domain training graph.

    Inputs carry the patch axis first so that data-parallel slicing hands every device
    its own patches with their RoIs: data (P, 3, H, W), rois (P, R, 5) whose batch
    index is local to the device (0 with one patch per device), domain_mask (P, R, D)
    one-hot, label (P, R) in {0, 1}. fc6 has one 2-way branch per domain; the mask picks
    each RoI's branch so that only its own domain's fc6 receives gradient.

    ``instance_weight`` > 0 adds RT-MDNet's instance embedding loss as a second output: for
    every positive RoI, a softmax over the domains' positive logits whose target is the
    RoI's own domain (``inst_label`` (P, R): the domain index, -1 for negatives, ignored).
    It trains the shared layers to tell this target from the other training targets, not
    only from background, and pushes the other branches' scores of it down.
    """
    feat, _ = extractor(extractor_name, feature_scale=feature_scale)
    pooled = roi_pool(feat, mx.sym.reshape(mx.sym.Variable("rois"), shape=(-1, 5)), shrink=roi_shrink,
                      offset=roi_offset)
    scores = fc_head(pooled, n_out=2 * n_domains, dropout=dropout)
    scores = mx.sym.reshape(scores, shape=(-1, n_domains, 2))
    mask = mx.sym.reshape(mx.sym.Variable("domain_mask"), shape=(-1, n_domains, 1))
    own = mx.sym.sum(mx.sym.broadcast_mul(scores, mask), axis=1, name="domain_scores")
    label = mx.sym.reshape(mx.sym.Variable("label"), shape=(-1,))
    binary = mx.sym.SoftmaxOutput(own, label=label, normalization="batch", name="softmax")
    if not instance_weight:
        return binary
    positive = mx.sym.reshape(mx.sym.slice_axis(scores, axis=2, begin=1, end=2), shape=(-1, n_domains))
    inst_label = mx.sym.reshape(mx.sym.Variable("inst_label"), shape=(-1,))
    instance = mx.sym.SoftmaxOutput(positive, label=inst_label, use_ignore=True, ignore_label=-1,
                                    normalization="valid", grad_scale=float(instance_weight), name="instance")
    return mx.sym.Group([binary, instance])


def extractor_param_names(extractor_name: str) -> list:
    feat, _ = _vggm(mx.sym.Variable("data")) if extractor_name == "vggm" else _squeezenet(mx.sym.Variable("data"))
    return [n for n in feat.list_arguments() if n != "data"]
