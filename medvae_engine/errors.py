"""User-facing errors: the CLI prints ``error: <message>`` and exits 2; the plugin shows a notification.

Every message names the file (or model) and the problem in one line.
"""


class MedVAEError(Exception):
    """Base class for problems caused by the user's input, not by a bug."""


class InputError(MedVAEError):
    """An input file is unreadable, corrupt, of the wrong dimensionality or holds NaN/Inf."""


class ConfigError(MedVAEError):
    """A configuration (training YAML, data source) that does not match its schema."""


class ModelError(MedVAEError):
    """An unknown model name, or a checkpoint that does not match the architecture."""


class WeightsNotFoundError(ModelError):
    """The weights of a known model are neither given, cached nor downloadable."""


class OutputError(MedVAEError):
    """The output path cannot be written."""


class Cancelled(MedVAEError):
    """Long work stopped because the user asked for it."""
