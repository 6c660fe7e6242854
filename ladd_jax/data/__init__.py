"""Training data: latent records on disk (records.py), written by the synthetic-data job (synth.py) or from real
images (encode_real.py), read by the grain loader (loader.py); `ladd-jax records` (records_command.py)."""

from ladd_jax.data.records import iter_records, read_manifest

__all__ = ["iter_records", "read_manifest"]
