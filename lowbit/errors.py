"""The one exception type lowbit raises for bad input.

Every user-facing failure (a broken model file, an unsupported op, a wrong shape) is a
``LowbitError`` whose message is one line naming the cause; the CLI prints it as
``lowbit: error: <message>`` and exits 1.
"""


class LowbitError(Exception):
    """A user-facing error: one line that names the file, node or input and what was expected."""


class LowbitWarning(UserWarning):
    """Something the user asked for that lowbit did otherwise, and why (e.g. a model kept float where integer
    kernels would be slower); the CLI prints it as ``lowbit: warning: <message>``."""
