"""Exceptions the command line reports as one-line errors (no heavy imports here)."""


class TrainingDiverged(RuntimeError):
    """Several optimizer steps in a row had a non-finite loss or gradient."""
