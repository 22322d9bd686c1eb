"""torchvision ResNet-18 weights load exactly: the converted model gives the torch model's logits."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lld_jax as L

torch = pytest.importorskip("torch", reason="PyTorch is the optional 'torch' extra")


def _torch_model(num_classes, seed=0):
    from torch_resnet import ResNet18

    torch.manual_seed(seed)
    m = ResNet18(num_classes)
    with torch.no_grad():  # random statistics: fresh BatchNorm would be the identity
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.normal_(1, 0.2)
                mod.bias.normal_(0, 0.1)
    return m.eval()


def test_converted_resnet18_matches_torch_logits(tmp_path):
    tm = _torch_model(7)
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        want = tm(torch.from_numpy(x)).numpy()
    path = tmp_path / "resnet18.pth"
    torch.save(tm.state_dict(), path)
    model = L.models.resnet18(7, input_shape=(64, 64, 3), rngs=nnx.Rngs(1))
    loaded = L.models.load_torch_resnet(model, str(path))
    assert "fc.weight" in loaded and "layer4.1.bn2.running_var" in loaded and len(loaded) == 102
    net, params = L.from_nnx(model)
    got = np.stack([np.asarray(net.apply(params, jnp.asarray(xi.transpose(1, 2, 0)))[0]) for xi in x])
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


def test_head_is_skipped_for_other_classes_and_errors_are_named():
    sd = _torch_model(1000).state_dict()
    model = L.models.resnet18(5, input_shape=(32, 32, 3), rngs=nnx.Rngs(0))
    head = np.asarray(model.head.kernel[...])
    loaded = L.models.load_torch_resnet(model, sd)  # head="auto": 1000 classes do not fit 5
    assert "fc.weight" not in loaded and np.array_equal(np.asarray(model.head.kernel[...]), head)
    np.testing.assert_array_equal(np.asarray(model.stem_conv.kernel[...]), sd["conv1.weight"].numpy().transpose(2, 3, 1, 0))
    with pytest.raises(ValueError, match="fc.weight: shape"):
        L.models.load_torch_resnet(L.models.resnet18(5, input_shape=(32, 32, 3), rngs=nnx.Rngs(0)), sd, head="load")
    bad = dict(sd)
    del bad["layer2.0.bn1.running_mean"]
    with pytest.raises(ValueError, match="missing layer2.0.bn1.running_mean"):
        L.models.load_torch_resnet(L.models.resnet18(5, input_shape=(32, 32, 3), rngs=nnx.Rngs(0)), bad)
    with pytest.raises(ValueError, match="imagenet"):
        L.models.load_torch_resnet(L.models.ResNet((8, 8, 3), (4,), (1,), 2, rngs=nnx.Rngs(0)), sd)
