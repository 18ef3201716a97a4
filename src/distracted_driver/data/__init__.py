"""Data stage: layout, synthetic sample, driver split, RecordIO, conversion, ingest."""
