"""Exceptions for expected, user-facing failures (the CLI prints them as one line, no traceback)."""


class BoltzgenError(Exception):
    """A problem with the user's input or files that the message fully explains.

    Library code raises it (or ValueError / FileNotFoundError) for bad arguments, unsupported
    systems, or an output directory that holds something else; ``boltzgen.cli`` turns it into one
    line on stderr and exit code 2.
    """
