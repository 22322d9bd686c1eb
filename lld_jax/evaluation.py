"""Evaluation reports in the layout of the paper's tables."""

from lld_jax._src.evaluation import PERCENTILES, evaluate_model, percentiles, spearman, table1_markdown

__all__ = ["PERCENTILES", "evaluate_model", "percentiles", "spearman", "table1_markdown"]
