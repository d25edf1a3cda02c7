"""foundation-suite: training and fine-tuning domain foundation models."""

__version__ = "0.1.0"
