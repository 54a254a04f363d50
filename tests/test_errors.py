"""errors: what the command line catches as what (a ConfigError is a UserError; SIGTERM is Ctrl-C)."""

import pytest

from ecoflap_exp.errors import ConfigError, Terminated, UserError


def test_a_config_error_is_caught_as_a_user_error_and_sigterm_as_ctrl_c():
    with pytest.raises(UserError, match="^sparsity=2 is not valid$"):
        raise ConfigError("sparsity=2 is not valid")
    with pytest.raises(KeyboardInterrupt):
        raise Terminated
    assert not issubclass(UserError, ConfigError)  # a failure in the run's work keeps its record
    assert not issubclass(Terminated, Exception)  # `except Exception` never swallows a SIGTERM
