"""Alias of :mod:`daskgd.data.synthetic`, kept for scripts written against daskgd 0.1."""

from daskgd.data.synthetic import make_classification, make_regression

__all__ = ["make_classification", "make_regression"]
