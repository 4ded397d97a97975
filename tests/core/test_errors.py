"""effx_serve.core.errors: one root for every error a user can cause; one message for a missing optional extra."""

import pytest

from effx_serve.core.errors import UserError, missing_extra, needs_extra
from training.errors import SpecError


def test_spec_errors_are_user_errors_and_still_value_errors():
    assert issubclass(SpecError, UserError) and issubclass(SpecError, ValueError)


def test_a_missing_extra_names_the_feature_the_module_and_the_install_command():
    with pytest.raises(UserError) as caught:
        with needs_extra("train", "export"):
            import effx_no_such_module  # noqa: F401
    assert str(caught.value) == "export needs the train extra (effx_no_such_module is missing): pip install 'effx-serve[train]'"
    assert str(missing_extra("load", "loadtest")) == "loadtest needs the load extra: pip install 'effx-serve[load]'"


def test_other_errors_pass_through():
    with pytest.raises(KeyError):
        with needs_extra("train", "export"):
            raise KeyError("not an import")
