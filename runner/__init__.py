"""Experiment runner for SAFE adapter freezing and HIES head pruning."""

__version__ = "0.1.0"
