"""Start-up and per-job cost: what Keras imports for unused features stays out, the bench reads either metric name."""

import subprocess
import sys
from types import SimpleNamespace

from src.bench_startup import epoch_seconds_key
from src.config import PROJECT_ROOT

IMPORT_CHECK = """
import sys
from src import compat
compat.import_tensorflow()
import keras, tensorflow
from keras.src.wrappers import fixes
left_out = [name for name in compat.KERAS_OPTIONAL_IMPORTS if name in sys.modules]
print("left out:", not left_out, left_out)
print("keras without its sklearn wrappers:", fixes.sklearn is None)
import matplotlib.pyplot, sklearn.metrics  # importable afterwards, as the figures and src.evaluate need
print("import afterwards:", sklearn.metrics.roc_auc_score([0, 1], [0.2, 0.8]) == 1.0)
print("keras works:", float(keras.ops.sum(keras.ops.ones(3))) == 3.0)
"""


def test_tensorflow_imports_without_what_keras_would_use_sklearn_and_matplotlib_for():
    out = subprocess.run([sys.executable, "-c", IMPORT_CHECK], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines == ["left out: True []", "keras without its sklearn wrappers: True", "import afterwards: True",
                     "keras works: True"], out.stdout


def test_the_startup_probe_reads_the_epoch_time_under_either_name():
    def run(*keys):
        return SimpleNamespace(data=SimpleNamespace(metrics={key: 1.0 for key in ("loss", *keys)}))

    assert epoch_seconds_key(run("system/epoch_seconds")) == "system/epoch_seconds"
    assert epoch_seconds_key(run("epoch_seconds")) == "epoch_seconds"  # runs logged before the system/ prefix
