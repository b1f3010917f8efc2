"""cotlab: a DVC pipeline for research on teaching language models to reason with chain-of-thought."""

__version__ = "0.1.0"
