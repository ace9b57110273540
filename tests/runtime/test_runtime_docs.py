"""The examples in the runtime's docstrings run and give what they show."""
import doctest
import importlib

import pytest

MODULES = ["numamem.runtime.kernels", "numamem.runtime.kernels._common", "numamem.runtime.kernels.elementwise",
           "numamem.runtime.reference"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
