"""The failures a stage turns into one clear paragraph (cotlab.stage). Here, at the bottom of the package, so
that catching them imports neither torch nor transformers."""


class ModelLoadError(RuntimeError):
    """A model, tokenizer or checkpoint cannot be loaded; the message says which path and why."""


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""
