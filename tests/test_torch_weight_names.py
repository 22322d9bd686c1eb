"""load_torch_resnet without PyTorch: a state_dict of NumPy arrays with torchvision's names lands leaf by leaf
where a hand-written table says, and every kind of mismatch is named. (tests/test_torch_weights.py compares
logits with torchvision's when the torch extra is installed.)"""

import numpy as np
import pytest
from flax import nnx

import lld_jax as L


def _model(classes=3):
    # torchvision's layout on a small scale: 7x7 stem, stage 2 starts with a projection shortcut.
    return L.models.ResNet((32, 32, 3), (4, 8), (1, 1), classes, stem="imagenet", rngs=nnx.Rngs(0))


def _state_dict(classes=3, seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"conv1.weight": (4, 3, 7, 7), "fc.weight": (classes, 8), "fc.bias": (classes,)}
    bn = {"bn1": 4, "layer1.0.bn1": 4, "layer1.0.bn2": 4, "layer2.0.bn1": 8, "layer2.0.bn2": 8, "layer2.0.downsample.1": 8}
    for name, c in bn.items():
        shapes.update({f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,), f"{name}.running_var": (c,)})
    shapes.update(
        {
            "layer1.0.conv1.weight": (4, 4, 3, 3),
            "layer1.0.conv2.weight": (4, 4, 3, 3),
            "layer2.0.conv1.weight": (8, 4, 3, 3),
            "layer2.0.conv2.weight": (8, 8, 3, 3),
            "layer2.0.downsample.0.weight": (8, 4, 1, 1),
        }
    )
    sd = {k: rng.uniform(0.5, 1.5, s).astype(np.float32) for k, s in shapes.items()}
    sd["bn1.num_batches_tracked"] = np.array(7)  # torch's counter: ignored
    return sd


def _expected(model, sd):
    """(model array, torchvision array converted by hand) for every parameter and statistic."""
    conv = lambda w: w.transpose(2, 3, 1, 0)  # (O, I, kh, kw) -> (kh, kw, I, O)
    pairs = [(model.stem_conv.kernel, conv(sd["conv1.weight"])), (model.head.kernel, sd["fc.weight"].T), (model.head.bias, sd["fc.bias"])]
    bns = [(model.stem_bn, "bn1")]
    for i, stage in enumerate(("layer1.0", "layer2.0")):
        block = model.blocks[i]
        pairs += [(block.conv1.kernel, conv(sd[f"{stage}.conv1.weight"])), (block.conv2.kernel, conv(sd[f"{stage}.conv2.weight"]))]
        bns += [(block.bn1, f"{stage}.bn1"), (block.bn2, f"{stage}.bn2")]
    pairs.append((model.blocks[1].conv_sc.kernel, conv(sd["layer2.0.downsample.0.weight"])))
    bns.append((model.blocks[1].bn_sc, "layer2.0.downsample.1"))
    for mod, name in bns:
        pairs += [
            (mod.scale, sd[f"{name}.weight"]),
            (mod.bias, sd[f"{name}.bias"]),
            (mod.mean, sd[f"{name}.running_mean"]),
            (mod.var, sd[f"{name}.running_var"]),
        ]
    return [(np.asarray(var[...]), want) for var, want in pairs]


def test_every_leaf_lands_where_torchvision_names_it():
    model, sd = _model(), _state_dict()
    loaded = L.models.load_torch_resnet(model, {f"module.{k}": v for k, v in sd.items()})  # DataParallel prefix stripped
    assert sorted(loaded) == sorted(k for k in sd if not k.endswith("num_batches_tracked"))
    pairs = _expected(model, sd)
    assert len(pairs) == len(loaded)
    for got, want in pairs:
        np.testing.assert_array_equal(got, want)


def test_head_rules_and_named_mismatches():
    sd = _state_dict(classes=10)
    model = _model(classes=3)
    head = np.asarray(model.head.kernel[...])
    loaded = L.models.load_torch_resnet(model, sd)  # head="auto": 10 classes do not fit 3, the fresh head stays
    assert "fc.weight" not in loaded and np.array_equal(np.asarray(model.head.kernel[...]), head)
    with pytest.raises(ValueError, match=r"fc.weight: shape \(8, 10\) \(converted\), model expects \(8, 3\)"):
        L.models.load_torch_resnet(_model(3), sd, head="load")
    ok = _state_dict(classes=3)
    skipped = _model(3)
    head = np.asarray(skipped.head.kernel[...])
    assert "fc.weight" not in L.models.load_torch_resnet(skipped, ok, head="skip") and np.array_equal(np.asarray(skipped.head.kernel[...]), head)
    for change, match in [
        (lambda d: d.pop("layer2.0.bn1.running_mean"), "missing layer2.0.bn1.running_mean"),
        (lambda d: d.update({"layer3.0.conv1.weight": np.zeros((8, 8, 3, 3), np.float32)}), "blocks per stage"),
        (lambda d: d.update({"extra.weight": np.zeros(3, np.float32)}), "unexpected extra.weight"),
        (lambda d: d.update({"layer1.0.conv1.weight": np.zeros((4, 4, 5, 5), np.float32)}), r"layer1.0.conv1.weight: shape \(5, 5, 4, 4\)"),
    ]:
        bad = _state_dict()
        change(bad)
        with pytest.raises(ValueError, match=match):
            L.models.load_torch_resnet(_model(), bad)
    with pytest.raises(ValueError, match="imagenet"):
        L.models.load_torch_resnet(L.models.ResNet((8, 8, 3), (4,), (1,), 2, rngs=nnx.Rngs(0)), ok)
    with pytest.raises(ValueError, match="head must be"):
        L.models.load_torch_resnet(_model(), ok, head="keep")
    with pytest.raises(FileNotFoundError, match="no state_dict file"):
        L.models.load_torch_resnet(_model(), "/nonexistent/resnet.pth")
