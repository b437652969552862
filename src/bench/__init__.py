"""Developer benchmarks (`python -m src.bench`, `src.bench_store`, `src.bench_pipeline`, `src.bench_ingest`)."""
