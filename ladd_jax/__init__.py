"""ladd_jax: Latent Adversarial Diffusion Distillation for the Stable Diffusion 3 family in JAX/Flax."""

__version__ = "0.1.0"
