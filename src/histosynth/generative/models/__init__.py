"""Generative models (model code only; training loops live elsewhere)."""
