"""Generators: the model networks (models/), the families that train and sample them
(families/, one module each, registered in families/__init__.py), the one training loop
(training.py, also under torchrun), the VAE and latent diffusion, and bulk generation and
snapshot scoring (generate.py)."""
