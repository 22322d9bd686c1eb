"""Loading torchvision ResNet weights (a local ``state_dict`` file; no network access) into :class:`lld_jax.models.ResNet`."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from lld_jax._src.models import ResNet


def _read_state_dict(source: str | Mapping[str, Any]) -> dict[str, np.ndarray]:
    if isinstance(source, (str, os.PathLike)):
        if not os.path.exists(source):
            raise FileNotFoundError(f"no state_dict file at {source!r}; save one with torch.save(torchvision_model.state_dict(), path).")
        try:
            import torch
        except ImportError as err:
            raise ImportError("reading a .pth state_dict needs PyTorch: pip install 'lld-jax[torch]' (or pass a dict of arrays).") from err
        source = torch.load(source, map_location="cpu", weights_only=True)
        if not isinstance(source, Mapping):
            raise ValueError("the file holds no state_dict (a mapping of parameter names to tensors); save model.state_dict(), not the model.")
    out = {}
    for k, v in source.items():
        v = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
        out[k[len("module.") :] if k.startswith("module.") else k] = v  # DataParallel checkpoints
    return out


def _torch_name(path: tuple) -> str:
    """Our parameter path -> torchvision's name prefix."""
    if path[0] == "stem_conv":
        return "conv1"
    if path[0] == "stem_bn":
        return "bn1"
    if path[0] == "head":
        return "fc"
    if path[0] == "blocks":
        raise AssertionError("handled by the caller")
    return ".".join(map(str, path))


def load_torch_resnet(model: ResNet, source: str | Mapping[str, Any], *, head: str = "auto") -> list[str]:
    """Copies torchvision ResNet weights into ``model`` in place; returns the names of what was loaded.

    Convolution kernels (O, I, kh, kw) become (kh, kw, I, O); BatchNorm's
    weight, bias, running_mean and running_var become scale, bias, mean and var
    (held constant in training, see :func:`lld_jax._src.models.frozen_batchnorm`);
    ``fc`` becomes the head. Block ``layer{s}.{b}`` is the b-th block of stage s.

    Args:
      model: a :class:`lld_jax.models.ResNet` with ``stem="imagenet"`` and torchvision's
        stage layout (e.g. :func:`lld_jax.models.resnet18`).
      source: a ``state_dict`` (mapping of names to tensors or arrays) or the
        path of a file saved with ``torch.save(model.state_dict(), path)``
        (reading a file needs PyTorch).
      head: ``"load"``, ``"skip"`` (keep the model's fresh head, e.g. to
        fine-tune on other classes), or ``"auto"`` (load when the shapes match).

    Raises:
      ValueError: a missing, unexpected or mis-shaped tensor (all named).
    """
    if head not in ("auto", "load", "skip"):
        raise ValueError(f"head must be 'auto', 'load' or 'skip', got {head!r}.")
    if getattr(model, "stem_kind", None) != "imagenet":
        raise ValueError("torchvision ResNets have the 'imagenet' stem (7x7 stride-2 conv, pooling); build the model with stem='imagenet'.")
    sd = _read_state_dict(source)
    blocks_per_stage: list[int] = []
    for k in sd:
        m = re.match(r"layer(\d+)\.(\d+)\.", k)
        if m:
            s, b = int(m.group(1)), int(m.group(2))
            while len(blocks_per_stage) < s:
                blocks_per_stage.append(0)
            blocks_per_stage[s - 1] = max(blocks_per_stage[s - 1], b + 1)
    if sum(blocks_per_stage) != len(model.blocks):
        raise ValueError(f"the state_dict has blocks per stage {blocks_per_stage}; the model has {len(model.blocks)} blocks in all.")
    starts = np.concatenate([[0], np.cumsum(blocks_per_stage)[:-1]])
    block_name = {int(starts[s] + b): f"layer{s + 1}.{b}" for s, n in enumerate(blocks_per_stage) for b in range(n)}
    sub = {"conv_sc": "downsample.0", "bn_sc": "downsample.1"}
    bn_keys = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
    graphdef, state = nnx.split(model)
    flat = dict(nnx.to_flat_state(state))
    loaded, problems, used = [], [], set()
    for path, var in flat.items():
        leaf = path[-1]
        if path[0] == "blocks":
            prefix = block_name[int(path[1])] + "." + sub.get(path[2], path[2])
        else:
            prefix = _torch_name(path[:-1])
        if prefix == "fc" and head == "skip":
            continue
        name = prefix + "." + (bn_keys.get(leaf, leaf) if "bn" in str(path[-2]) or path[-2] in ("bn_sc",) else {"kernel": "weight"}.get(leaf, leaf))
        if name not in sd:
            problems.append(f"missing {name}")
            continue
        value = sd[name]
        if leaf == "kernel":
            value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
        current = var.get_value() if hasattr(var, "get_value") else var.value
        if value.shape != current.shape:
            if prefix == "fc" and head == "auto":
                continue
            problems.append(f"{name}: shape {value.shape} (converted), model expects {current.shape}")
            continue
        var.set_value(np.asarray(value, current.dtype)) if hasattr(var, "set_value") else setattr(var, "value", np.asarray(value, current.dtype))
        loaded.append(name)
        used.add(name)
    unexpected = [k for k in sd if k not in used and not k.endswith("num_batches_tracked") and not (k.startswith("fc.") and head != "load")]
    if problems or unexpected:
        raise ValueError("the state_dict does not fit the model: " + "; ".join(problems + [f"unexpected {k}" for k in unexpected]))
    nnx.update(model, nnx.from_flat_state(flat))
    return loaded
