"""One exception type for every user-facing failure: the CLI prints its message and exits 2."""


class CamelidError(Exception):
    """A failure caused by the user's input or environment, with a message that names the culprit."""


class CheckpointError(CamelidError):
    """A model folder is missing, corrupt, unsafe or does not match what was expected."""
