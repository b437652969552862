"""The tf.data pipelines both loops share: a stateless (seed, epoch) shuffle, O(1) per step, resumable at any step."""

from src.data.splits import Splits

# batches gathered by one call into numpy (a call costs ~50 us and holds the GIL)
GATHER_BATCHES = 20


def make_datasets(splits: Splits, batch_size: int, seed: int, start_step: int = 0):
    """Training batches from a fresh shuffle of the rows every epoch, repeated; fixed validation batches.

    `start_step`: the stream from that batch on (a resumed run's), exactly as an uninterrupted run reaches it.
    """
    import tensorflow as tf

    n_rows = len(splits.x_train)
    # the stream is the concatenation of the epoch permutations, cut into batches: batch k starts at row
    # k * batch_size of it, i.e. inside permutation (k * batch_size) // n_rows
    first_permutation, skip_rows = divmod(start_step * batch_size, n_rows)

    def epoch_order(epoch):
        # Epoch e's order is a stateless permutation keyed by (seed, e), so the
        # stream depends on the seed alone, not on how many iterators are opened
        # on it. (Keras's fit under a distribution strategy opens one to build
        # the model and discards it; with `Dataset.shuffle` fit would then get
        # the second shuffle and the tape loop the first.) A full permutation is
        # what the tutorial's shuffle buffer (10,000 >= the 10,000 rows) gives.
        return tf.random.experimental.stateless_shuffle(
            tf.range(n_rows, dtype=tf.int32), seed=tf.stack([tf.cast(seed, tf.int64), epoch])
        )

    def gather(rows):
        # numpy, not tf.gather on a tf.constant: the rows stay in the memory-mapped cache,
        # shared with every job on the machine, instead of being copied into each process
        return splits.x_train[rows], splits.y_train[rows]

    def batch_of(rows):
        x, y = tf.numpy_function(gather, [rows], (tf.float32, tf.float32), stateful=False)
        x.set_shape([None, *splits.x_train.shape[1:]])
        y.set_shape([None, 1])
        return x, y

    # Each epoch's permutation is drawn once; `rebatch` cuts the endless concatenation of
    # epochs into batches, as the tutorial's shuffle().repeat().batch() does (a batch may
    # span two epochs), so a step costs the same whatever the number of rows.
    train = (
        tf.data.Dataset.range(first_permutation, 2**62)
        .map(epoch_order)
        .enumerate()
        .map(lambda i, order: order[tf.where(i == 0, tf.constant(skip_rows, tf.int64), 0):])
        .rebatch(batch_size * GATHER_BATCHES)
        .map(batch_of)
        .rebatch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    val = tf.data.Dataset.from_tensor_slices((splits.x_val, splits.y_val)).batch(batch_size).cache()
    return train.with_options(pipeline_options()), val.with_options(pipeline_options())


def pipeline_options():
    """tf.data options for both pipelines: no autotuning model thread.

    Deleting an iterator (fit's at its end; the tape loop's when it returns) waits for that thread,
    with the GIL held: a sweep's jobs froze for 2-39 s at their end, every thread idle (seen in native
    stacks: `~IteratorResource` waiting in `UnboundedThreadPool::~LogicalThreadWrapper`). Nothing here
    needs it: the maps run one call at a time and prefetch keeps its own buffer heuristic.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return options
