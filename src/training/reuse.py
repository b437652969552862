"""Compiled models kept across the jobs of one process: a job whose graph an earlier job traced trains on it.

Tracing and optimizing a loop's step functions costs 1.5–2 s a job here, whatever the model's size: most of a
short trial. Jobs of one sweep or search that differ only in what the graph does not hold (the seed, the
epochs, the data's values, where they are tracked) run the same graph, so a job takes the compiled model an
earlier job left, with its own freshly built model's initial state copied into it, and skips the trace. The
results are bit-identical to a fresh process's (tests/test_reuse.py): the fresh model is still built, with the
same seed, so every random draw happens as before; only its values move into the compiled twin. The loops reset
the optimizer's state on their side (src.training.programs). A penalty's factor is a variable of the graph
(src.core.regularizers), so the trials of a search over `reg.l2` share one graph too.
"""

import hashlib
import json
from collections import OrderedDict
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

# TensorFlow's random ops whose numbers depend on the global seed at trace time (the Stateless* ones do not)
STATEFUL_RANDOM_PREFIXES = ("Random", "Stateful")
STATEFUL_RANDOM_OPS = ("TruncatedNormal", "ParameterizedTruncatedNormal", "Multinomial")
_STATELESS = "_overfit_lab_draws_statelessly"
KEPT_MODELS = 4  # a sweep's variants interleave (reg x loop x seed): a few graphs, each small next to the data
_kept: "OrderedDict[str, Any]" = OrderedDict()

# What a job's graph does not depend on: read by Python around the traced functions, or not at all. Everything
# else in the config keys the graph (an unknown key of a user's own option too: it never shares a graph by mistake).
PER_RUN_KEYS = ("seed", "quiet", "resume", "trial", "mlflow", "data", "train.epochs", "train.checkpoint_every",
                "train.early_stopping", "train.collective_timeout_seconds", "train.reuse_compiled")


def graph_key(cfg: DictConfig, splits, steps_per_epoch: int, strategy) -> Optional[str]:
    """The digest of what a job's traced graph is made of; None where a job must build its own (turned off, or
    a distribution strategy over several replicas, whose functions belong to that strategy's devices)."""
    import tensorflow as tf

    if not cfg.train.reuse_compiled or strategy is not tf.distribute.get_strategy():
        return None
    plain = OmegaConf.to_container(cfg, resolve=True)
    if "l2" in plain["reg"]:  # in a variable of the graph (src.core.regularizers): only whether it is on counts
        plain["reg"]["l2"] = plain["reg"]["l2"] > 0
    for key in PER_RUN_KEYS:
        *parents, last = key.split(".")
        node = plain
        for parent in parents:
            node = node.get(parent, {})
        node.pop(last, None)
    # the data enters the graph by its arrays' shapes and types, and the steps an epoch runs
    plain["arrays"] = [(tuple(a.shape[1:]), str(a.dtype)) for a in (splits.x_train, splits.y_train, splits.x_val,
                                                                     splits.y_val)]
    plain["rows"] = [len(splits.x_val), steps_per_epoch]
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()


def take(key: Optional[str], fresh):
    """The compiled model kept under `key`, holding `fresh`'s initial state (weights, and the random generators'
    states); `fresh` itself when none is kept. A model taken is the job's until it `keep`s it again."""
    kept = _kept.pop(key, None) if key else None
    if kept is None:
        return fresh
    mine, theirs = [*kept.variables, *penalty_factors(kept)], [*fresh.variables, *penalty_factors(fresh)]
    if [tuple(v.shape) for v in mine] != [tuple(v.shape) for v in theirs]:  # a builder that is not a function of its config
        return fresh
    for target, source in zip(mine, theirs):
        target.assign(source)
    return kept


def penalty_factors(model) -> list:
    """The variables the model's penalties read their factors from (src.core.regularizers), each once."""
    import keras

    from src.core.compat import sublayers

    found = {}
    for layer in sublayers(model):
        for kind in ("kernel_regularizer", "bias_regularizer", "activity_regularizer"):
            factor = getattr(getattr(layer, kind, None), "l2", None)
            if isinstance(factor, keras.Variable):
                found.setdefault(id(factor), factor)
    return list(found.values())


def keep(key: Optional[str], model, example) -> None:
    """Keep a model that has trained to the end for the next job with its graph (the oldest beyond KEPT_MODELS go),
    unless its forward pass draws from TensorFlow's stateful random ops (see `draws_statelessly`)."""
    if not key or not draws_statelessly(model, example):
        return
    _kept[key] = model
    _kept.move_to_end(key)
    while len(_kept) > KEPT_MODELS:
        _kept.popitem(last=False)


def draws_statelessly(model, example) -> bool:
    """Whether the training-mode forward pass uses no stateful random op (say a `tf.random.normal` without a seed
    in a user's layer). Such an op takes its seed from the global seed when traced, so a reused graph would draw
    the first job's numbers; Keras's own layers (dropout, noise) draw from seed generators, whose state the next
    job's model brings along. Checked once per model, on a forward pass traced for the purpose."""
    import tensorflow as tf

    known = getattr(model, _STATELESS, None)
    if known is None:
        spec = tf.TensorSpec([None, *example.shape[1:]], tf.as_dtype(example.dtype))
        graph = tf.function(lambda x: model(x, training=True)).get_concrete_function(spec).graph.as_graph_def()
        nodes = [*graph.node, *(node for function in graph.library.function for node in function.node_def)]
        known = not any(node.op.startswith(STATEFUL_RANDOM_PREFIXES) or node.op in STATEFUL_RANDOM_OPS
                        for node in nodes)
        setattr(model, _STATELESS, known)
    return known


def forget() -> None:
    """Drop every kept model (a test's fresh start)."""
    _kept.clear()
