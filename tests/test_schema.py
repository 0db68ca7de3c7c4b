"""The config schema: every annotation kind accepts what it should and names field, value and type otherwise."""

import subprocess
import sys
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from kvshift_lens.core.errors import ConfigError
from kvshift_lens.core.schema import build


@dataclass
class Inner:
    n: int = 1
    x: float = 1.0
    flag: bool = False
    name: str = "a"
    width: Optional[int] = None
    kind: Literal["p", "q"] = "p"
    sizes: list[int] = field(default_factory=list)
    table: dict[str, float] = field(default_factory=dict)

    def validate(self) -> None:
        if self.n < 0:
            raise ConfigError(f"inner.n={self.n} must be >= 0")


@dataclass
class Outer:
    seed: int = 0
    inner: Inner = field(default_factory=Inner)


@pytest.mark.parametrize("data,expected", [
    ({"inner": {"n": 3}}, Inner(n=3)),
    ({"inner": {"n": 4.0}}, Inner(n=4)),  # `train.steps=1e3` parses as a float
    ({"inner": {"x": 2}}, Inner(x=2.0)),
    ({"inner": {"flag": True, "name": 2024}}, Inner(flag=True, name="2024")),  # `name=2024` parses as an int
    ({"inner": {"width": None}}, Inner()),
    ({"inner": {"width": 8, "kind": "q"}}, Inner(width=8, kind="q")),
    ({"inner": {"sizes": [1, 2.0], "table": {"a": 1}}}, Inner(sizes=[1, 2], table={"a": 1.0})),
    ({}, Inner()),
])
def test_values_of_the_right_kind_are_accepted_and_converted(data, expected):
    built = build(Outer, data, "")
    assert built.inner == expected and type(built.inner.x) is float and type(built.inner.n) is int


@pytest.mark.parametrize("data,message", [
    ({"seed": "abc"}, "seed='abc': expected an integer, got str"),
    ({"seed": True}, "seed=True: expected an integer, got bool"),
    ({"inner": {"n": 1.5}}, "inner.n=1.5: expected an integer, got float"),
    ({"inner": {"x": "fast"}}, "inner.x='fast': expected a number, got str"),
    ({"inner": {"x": float("nan")}}, "inner.x=nan: expected a finite number"),
    ({"inner": {"x": float("-inf")}}, "inner.x=-inf: expected a finite number"),
    ({"inner": {"flag": "yes"}}, "inner.flag='yes': expected true or false, got str"),
    ({"inner": {"flag": 1}}, "inner.flag=1: expected true or false, got int"),
    ({"inner": {"name": None}}, "inner.name=None: expected a string, got null"),
    ({"inner": {"width": "wide"}}, "inner.width='wide': expected an integer or null, got str"),
    ({"inner": {"kind": "r"}}, "inner.kind='r': expected one of ['p', 'q']"),
    ({"inner": {"sizes": 3}}, "inner.sizes=3: expected a list (each item an integer), got int"),
    ({"inner": {"sizes": [1, "x"]}}, "inner.sizes[1]='x': expected an integer, got str"),
    ({"inner": {"table": {"a": "b"}}}, "inner.table.a='b': expected a number, got str"),
    ({"inner": 5}, "inner=5 must be a mapping of fields"),
    ({"inner": {"colour": 1}}, "unknown field(s) ['inner.colour']; valid: ['flag',"),
    ({"inner": {"n": -1}}, "inner.n=-1 must be >= 0"),  # the dataclass's own validate()
])
def test_bad_values_raise_one_line_naming_field_value_and_type(data, message):
    with pytest.raises(ConfigError) as e:
        build(Outer, data, "")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_required_field_that_is_missing_is_named():
    @dataclass
    class Needs:
        run_dir: str

    with pytest.raises(ConfigError, match=r"^detect.run_dir is missing: set detect.run_dir=<value>$"):
        build(Needs, {}, "detect")


def test_validation_plumbing_imports_no_torch():
    code = ("import sys, kvshift_lens.core.schema, kvshift_lens.training.train_config, kvshift_lens.training.cli;"
            "assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_composing_and_validating_a_run_config_imports_no_transformer_lens():
    code = ("import sys; from kvshift_lens.training.run_config import compose;"
            "compose(['model/mixer=canon', 'task=mqar', 'train.steps=10', 'train.warmup=1', 'train.eval_every=5']);"
            "assert 'transformer_lens' not in sys.modules, 'transformer_lens imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
