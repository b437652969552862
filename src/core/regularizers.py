"""The regularizers a `reg` option switches on, each described once: its knob, its valid range, how it reaches a model.

The `reg` schema, `validate`, the model builder and the tests all derive from `REGULARIZERS`:
adding one (say L1) is one entry here plus a `conf/reg/<option>.yaml`. A reg option's name
lists the knobs it switches on, joined by `_` (`l2_dropout`), or is `none`.

A knob reaches a model in one of two ways. A kernel penalty (L2) is handed to the builder as its
`kernel_regularizer` argument when it takes one (the builder puts it where it belongs: the tutorial's
hidden layers), and is otherwise put on every kernel of the built model. Any other knob (dropout) is
handed to the builder as the argument it names; a builder without that argument cannot take it.
"""

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

KERNEL_ARGUMENT = "kernel_regularizer"  # the builder argument every kernel penalty goes to


@dataclass(frozen=True)
class Regularizer:
    """One knob of the `reg` group (0 = off), and how it reaches the model when on."""

    valid: Callable[[float], bool]
    rule: str  # why a value is refused, e.g. "must be 0 or positive"
    kernel_penalty: Optional[Callable[[float], Any]] = None  # -> a Keras regularizer on kernels
    argument: Optional[str] = None  # the builder argument the knob's value goes to (when not a kernel penalty)


def _l2(factor: float):
    import keras

    penalty = keras.regularizers.L2(factor)
    # the factor in a variable, not a constant of the traced graph: the trials of a search over reg.l2 then share
    # one graph (src.training.reuse). The penalty is the same float32 product; it still saves as a plain L2.
    penalty.l2 = keras.Variable(factor, dtype="float32", trainable=False, name="l2_factor")
    # saved (and cloned) with the factor's value as a number, as keras.regularizers.L2(factor) is: the shortest
    # decimal that gives back the float32 (0.001, not 0.0010000000474974513)
    penalty.get_config = lambda: {"l2": float(str(keras.ops.convert_to_numpy(penalty.l2)))}
    return penalty


# Knob names hold no `_`: an option's name is its knobs joined by `_`.
REGULARIZERS: Dict[str, Regularizer] = {
    "l2": Regularizer(lambda v: 0 <= v < math.inf, "must be 0 or a positive finite number", kernel_penalty=_l2),
    "dropout": Regularizer(lambda v: 0 <= v < 1, "must be in [0, 1)", argument="dropout"),
}


def knobs_on(reg) -> List[str]:
    """The knobs a `reg` config switches on (value > 0), in REGULARIZERS order."""
    return [knob for knob in REGULARIZERS if reg[knob] > 0]


def option_name(knobs: List[str]) -> str:
    """The reg option that switches on exactly these knobs: `none`, `l2`, `l2_dropout`, ..."""
    return "_".join(knobs) or "none"


def kernel_regularizer(reg):
    """The penalty on each kernel (None without one); several kernel knobs add up."""
    penalties = [REGULARIZERS[k].kernel_penalty(reg[k]) for k in knobs_on(reg) if REGULARIZERS[k].kernel_penalty]
    if len(penalties) <= 1:
        return penalties[0] if penalties else None
    return lambda kernel: sum(penalty(kernel) for penalty in penalties)


def builder_arguments(reg) -> Dict[str, float]:
    """The knobs that go to the builder as arguments of their own (e.g. dropout=0.5), off ones as 0."""
    return {r.argument: float(reg[k]) for k, r in REGULARIZERS.items() if r.argument}
