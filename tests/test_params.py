"""Parameters keep their values and types on every path to a notebook (property tests with Hypothesis).

A value travels: given (CLI, REST, a sweep, a Job) -> checked against the notebook's defaults -> written
into the run's spec (JSON) -> read back by the executing process -> injected by papermill as Python source
-> evaluated in the kernel. Each hop is checked here for any JSON value a parameters cell can hold.
"""
import json
import math
from pathlib import Path

import nbformat
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from papermill.translators import PythonTranslator

from notelab.params import check_params, load_yaml, parse_value
from notelab.runs import read_spec, write_spec
from notelab.testing import scratch_settings

# every JSON value, with the floats Python's json writes (inf, -inf, nan) and any text (emoji, quotes,
# backslashes, newlines, lone surrogates: JSON can carry them all)
scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(st.characters(codec=None, exclude_categories=())))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def same(a, b) -> bool:
    "Equal, type included (True is not 1, 1 is not 1.0), NaN equal to NaN, -0.0 not 0.0."
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


@pytest.fixture(scope="module")
def scratch():
    with scratch_settings() as s:
        yield s


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_values)
def test_the_spec_carries_any_json_value_exactly(scratch, value):
    spec = {"run_id": "property", "params": {"p": value}}
    got = read_spec(write_spec(spec))["params"]["p"]
    assert same(got, value), (value, got)


@settings(max_examples=300, deadline=None)
@given(value=json_values)
def test_papermill_injects_any_json_value_exactly(value):
    "The parameters cell papermill writes, evaluated as the kernel does, gives the value back."
    ns = {}
    exec(PythonTranslator.codify({"p": value}), ns)
    assert same(ns["p"], value), (value, ns["p"])


@settings(max_examples=200, deadline=None)
@given(x=st.floats(allow_nan=False))
def test_a_float_typed_on_the_command_line_is_that_float(x):
    for text in (repr(x), f"{x:e}", f"{x:E}", json.dumps(x)):
        got = parse_value(text, 0.5)
        assert isinstance(got, (int, float)) and float(got) == float(text.replace("Infinity", "inf")), (text, got)
    if math.isfinite(x):  # YAML writes infinity as .inf
        got = load_yaml(f"lr: {x:e}\n")["lr"]
        assert type(got) is float and got == float(f"{x:e}")


@pytest.fixture(scope="module")
def typed_notebook(tmp_path_factory) -> Path:
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell("lr = 0.001\nsteps = 10\nname = 'x'\nflags = [1]\nopts = {'a': 1}\nanything = None")
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p]
    path = tmp_path_factory.mktemp("nb") / "typed.ipynb"
    nbformat.write(nb, path)
    return path


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lr=st.floats(allow_nan=False, allow_infinity=True) | st.integers(), name=st.text(), anything=json_values)
def test_checked_values_keep_the_type_of_their_default(typed_notebook, lr, name, anything):
    "An int given for a float parameter becomes a float; everything else comes back as it was given."
    got = check_params(typed_notebook, {"lr": lr, "name": name, "anything": anything})
    assert type(got["lr"]) is float and got["lr"] == float(lr)
    assert same(got["name"], name) and same(got["anything"], anything)
