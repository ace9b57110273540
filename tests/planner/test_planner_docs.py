"""The examples in the planner's and models' docstrings run and give what they show."""
import doctest
import importlib

import pytest

MODULES = [
    "numamem.planner", "numamem.planner.boxes", "numamem.planner.traffic", "numamem.planner.ops", "numamem.planner.graph", "numamem.planner.builder",
    "numamem.planner.partition", "numamem.planner.plan", "numamem.planner.planfile", "numamem.planner.check",
    "numamem.planner.report", "numamem.planner.planner",
    "numamem.models", "numamem.models.cnn", "numamem.models.bert", "numamem.models.mlp",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
