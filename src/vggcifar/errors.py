"""User-facing errors.

Library code raises :class:`VggCifarError` for problems the user can fix (bad option, bad file,
missing data). The command-line tools turn it into a one-line message and exit code 2; anything
else is a bug and keeps its traceback.
"""


class VggCifarError(Exception):
    """A problem with the user's input, with a message that names the problem and the fix."""
