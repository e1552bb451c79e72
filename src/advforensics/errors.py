"""User-facing errors. The CLI turns these into one line on stderr and a non-zero exit."""


class AdvForensicsError(Exception):
    """Base class of every error caused by user input (bad names, files, shapes, values)."""


class UnknownNameError(AdvForensicsError, KeyError):
    """A registry lookup for a name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class InputValidationError(AdvForensicsError, ValueError):
    """A tensor, array or parameter that violates the documented contract."""


class DataFileError(AdvForensicsError):
    """A data set file that is missing, truncated, corrupt or fails its checksum."""


class CheckpointError(AdvForensicsError):
    """A weights file or card that is missing, corrupt, tampered or for another model."""
