"""sedlib: sound event detection pipeline reproducing ATST-SED and multi-iteration multi-stage fine-tuning.

The package is a plain library; the Snakemake rules under ``rules/`` call it through ``python -m sedlib``.
"""

__version__ = "0.1.0"
