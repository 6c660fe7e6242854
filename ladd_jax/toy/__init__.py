"""The toy world: the laboratory in which ladd_jax's claims are measured on a CPU.

world.py (the captioned-shapes dataset and its grammar), components.py (the toy SD3 folder: VAE, text encoders,
tokenizers from tokenizers.py, an MMDiT), vae.py (its VAE trainer), evaluator.py + metrics.py (the evaluator
network, FD and alignment), demo.py (`ladd-jax demo`), assets/ (the shipped checkpoints). The SD3-scale library
(models, convert, data, train) never imports this package; only cli.py does.
"""
