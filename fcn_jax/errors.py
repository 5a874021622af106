"""The common base of the errors a user can fix (reported as one line).

Every command runs its main through `fcn_jax.cli.run`, which prints a
`UserError` as one line `error: <message>` on stderr and exits with status 1;
any other exception is a bug and keeps its full traceback. The message names
the flag, file or value and says what is wrong with it.

The specific error classes keep their historical bases too (`DataError` is
still a `ValueError`, ...), so code that catches those keeps working.
"""


class UserError(Exception):
  """A mistake the user can fix: a bad flag, config value, file or input."""


class FlagError(ValueError, UserError):
  """A command-line flag has a value the command cannot use."""
