"""Data-set level measurements: region counts (Lemma 7), certified accuracy, reports in the layout of the paper's tables."""

from lld_jax._src.evaluation import PERCENTILES, evaluate_model, percentiles, spearman
from lld_jax._src.regions import RegionCounts, count_regions
from lld_jax._src.robustness import certify_dataset, robustness_curve

__all__ = [
    "PERCENTILES",
    "RegionCounts",
    "certify_dataset",
    "count_regions",
    "evaluate_model",
    "percentiles",
    "robustness_curve",
    "spearman",
]
