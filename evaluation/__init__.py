"""The evaluation service and every benchmark task."""
