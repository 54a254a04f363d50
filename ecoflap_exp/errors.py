"""The exceptions that reach the user as a message instead of a stack trace."""


class UserError(Exception):
    """Bad input (config value, missing file, unusable data): the message names the fix."""


class ConfigError(UserError):
    """A UserError before a run's work starts (a bad value, a missing file or checkpoint, a model
    that does not fit its calib or suite): no run happened, so no record is written."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what SLURM, `timeout` and docker send), handled as Ctrl-C is: the run is marked
    interrupted, finished points are kept."""
