"""One exception type for bad user input, so the CLI can print it cleanly."""


class InputError(ValueError):
    """Bad input from the user: a file, key or value that is not what was expected.

    Messages name the offending file/key/value and say what was expected.
    """
