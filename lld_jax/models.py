"""Built-in piecewise-linear models of the paper's experiments, and their parts.

Every model returns ``(output, preacts)`` for one example and reaches the
geometry functions through :func:`lld_jax.from_nnx`.

* :class:`MLP`, :class:`CNN`, :class:`ResNet` / :func:`resnet18` (paper Sec. 5),
  :class:`RNN` and :class:`ScoRNN` (padded sequences, Sec. 5.2;
  :func:`cayley_recurrent` builds scoRNN's orthogonal matrix);
  ``INITS`` / :func:`reinitialize`: PyTorch's default initialisation.
* :class:`Stem` and :func:`conv_axis_tangent`: a conv net's first layer split
  off for the sampled ROLL loss; :class:`RecurrentCell`: an Elman cell's
  weights, what a recurrent model's ``recurrent_cell()`` declares for
  ``method="causal"``.
* :func:`load_torch_resnet`: torchvision ResNet weights (the ``torch`` extra).
"""

from lld_jax._src.causal import RecurrentCell
from lld_jax._src.models import CNN, INITS, MLP, ResNet, reinitialize, resnet18
from lld_jax._src.recurrent import RNN, ScoRNN, cayley_recurrent
from lld_jax._src.stem import Stem, conv_axis_tangent
from lld_jax._src.torch_weights import load_torch_resnet

__all__ = [
    "CNN",
    "INITS",
    "MLP",
    "RNN",
    "RecurrentCell",
    "ResNet",
    "ScoRNN",
    "Stem",
    "cayley_recurrent",
    "conv_axis_tangent",
    "load_torch_resnet",
    "reinitialize",
    "resnet18",
]
