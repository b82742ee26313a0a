"""Errors a user can cause. The CLI prints their message as one line and exits non-zero."""


class UserError(Exception):
    """A mistake in the user's input (paths, ids, numbers, files): said in one line, no traceback."""


class DatasetError(UserError):
    """A dataset that cannot be found, read or trusted."""


class ConfigError(UserError):
    """A configuration value that makes no sense, or that contradicts a saved run."""


class DivergenceError(RuntimeError):
    """A loss or Q value became NaN/inf during training."""


class NonFiniteActionError(DivergenceError):
    """A policy produced a NaN or infinite action; it is never sent to the simulator."""
