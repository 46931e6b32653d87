"""The one exception users see: a problem with their input, shown as one line, never a traceback."""


class UserError(Exception):
    """A problem with the user's input (file, key, value, data): one line naming it, exit status 2."""
