"""Data-set level measurements: region counts (Lemma 7) and reports in the layout of the paper's tables."""

from lld_jax._src.evaluation import PERCENTILES, evaluate_model, percentiles, spearman, table1_markdown
from lld_jax._src.regions import RegionCounts, count_regions

__all__ = ["PERCENTILES", "RegionCounts", "count_regions", "evaluate_model", "percentiles", "spearman", "table1_markdown"]
