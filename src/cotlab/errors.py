"""The failures a stage turns into one clear paragraph (cotlab.stage). Here, at the bottom of the package, so
that catching them imports neither torch nor transformers."""


class ModelLoadError(RuntimeError):
    """A model, tokenizer or checkpoint cannot be loaded; the message says which path and why."""


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


class BackendFailedError(RuntimeError):
    """More of a teacher's or judge's requests failed than its max_failure_rate allows; the message names the
    endpoint and the failure kinds. Raised before the stage writes anything."""


class OracleUnavailable(Exception):
    """The dataset has no reasoning for this example, so an oracle teacher cannot answer it (data.candidates and
    formats raise it, teacher catches it)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
