"""The data: HIGGS rows from a file or a URL, ingested once into a shared binary cache, and the tf.data pipelines."""
