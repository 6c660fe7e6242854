"""Evaluation of the toy world: the evaluator network and its metrics (Frechet distance, prompt alignment)."""
