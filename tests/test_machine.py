"""The one state-machine idiom (linchpin_common.machine)."""

import enum

import pytest

from linchpin_common.machine import IllegalTransition, Transitions


class Light(enum.Enum):
    OFF = 1
    ON = 2
    BROKEN = 3


LIGHT = Transitions("light", Light, {
    (Light.OFF, "press"): Light.ON,
    (Light.ON, "press"): Light.OFF,
    (Light.ON, "surge"): Light.BROKEN,
}, ignored=[(Light.BROKEN, "press")])


def test_next_follows_the_table():
    assert LIGHT.next(Light.OFF, "press") is Light.ON
    assert LIGHT.next(Light.ON, "surge") is Light.BROKEN


def test_an_input_not_listed_is_loud_and_names_machine_state_and_input():
    with pytest.raises(IllegalTransition) as caught:
        LIGHT.next(Light.OFF, "surge")
    assert str(caught.value) == "light: input 'surge' is not allowed in state OFF"
    assert (caught.value.state, caught.value.event) == (Light.OFF, "surge")


def test_ignored_inputs_are_declared_not_taken():
    assert LIGHT.ignores(Light.BROKEN, "press")
    assert not LIGHT.allows(Light.BROKEN, "press")
    with pytest.raises(IllegalTransition):
        LIGHT.next(Light.BROKEN, "press")


def test_reachable_and_inputs():
    assert LIGHT.reachable(Light.OFF) == {Light.OFF, Light.ON, Light.BROKEN}
    assert LIGHT.reachable(Light.BROKEN) == {Light.BROKEN}
    assert LIGHT.inputs() == {"press", "surge"}


def test_a_table_that_contradicts_itself_is_refused():
    with pytest.raises(ValueError):
        Transitions("bad", Light, {(Light.OFF, "press"): Light.ON}, ignored=[(Light.OFF, "press")])
    with pytest.raises(TypeError):
        Transitions("bad", Light, {("OFF", "press"): Light.ON})
