"""The regularizers a `reg` option switches on, each described once: its knob, its valid range, what it adds.

The `reg` schema, `validate`, the model builder and the tests all derive from `REGULARIZERS`:
adding one (say L1) is one entry here plus a `conf/reg/<option>.yaml`. A reg option's name
lists the knobs it switches on, joined by `_` (`l2_dropout`), or is `none`.
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict, List


@dataclass(frozen=True)
class Regularizer:
    """One knob of the `reg` group (0 = off) and what it adds to each hidden layer when on."""

    valid: Callable[[float], bool]
    rule: str  # why a value is refused, e.g. "must be 0 or positive"
    kernel_penalty: Callable[[float], Any] = None  # -> a Keras regularizer on the layer's kernel
    layer_after: Callable[[float], Any] = None  # -> a Keras layer placed after the hidden layer


def _l2(factor: float):
    import keras

    return keras.regularizers.L2(factor)


def _dropout(rate: float):
    import keras

    return keras.layers.Dropout(rate)


# Knob names hold no `_`: an option's name is its knobs joined by `_`.
REGULARIZERS: Dict[str, Regularizer] = {
    "l2": Regularizer(lambda v: v >= 0, "must be 0 or positive", kernel_penalty=_l2),
    "dropout": Regularizer(lambda v: 0 <= v < 1, "must be in [0, 1)", layer_after=_dropout),
}


def knobs_on(reg) -> List[str]:
    """The knobs a `reg` config switches on (value > 0), in REGULARIZERS order."""
    return [knob for knob in REGULARIZERS if reg[knob] > 0]


def option_name(knobs: List[str]) -> str:
    """The reg option that switches on exactly these knobs: `none`, `l2`, `l2_dropout`, ..."""
    return "_".join(knobs) or "none"


def kernel_regularizer(reg):
    """The penalty on each hidden kernel (None without one); several kernel knobs add up."""
    penalties = [REGULARIZERS[k].kernel_penalty(reg[k]) for k in knobs_on(reg) if REGULARIZERS[k].kernel_penalty]
    if len(penalties) <= 1:
        return penalties[0] if penalties else None
    return lambda kernel: sum(penalty(kernel) for penalty in penalties)


def layers_after(reg) -> list:
    """The layers that follow each hidden layer (e.g. Dropout), in REGULARIZERS order."""
    return [REGULARIZERS[k].layer_after(reg[k]) for k in knobs_on(reg) if REGULARIZERS[k].layer_after]
