"""Errors Saturn shows to users.

A `SaturnError` is a problem with what the user gave us (a spec, a profile table, a flag): the CLI
prints its message and exits with code 2, never a traceback. Anything else escaping is a bug.
"""


class SaturnError(Exception):
    """A user-facing error: the message names the field, the bad value and the fix."""

    exit_code = 2


class SpecError(SaturnError):
    """The workload spec is invalid."""


class InfeasibleError(SaturnError):
    """A job cannot run on the given cluster with the given profiles."""


class MissingProfilesError(SaturnError):
    """The planner needs profile rows that the store does not have."""
