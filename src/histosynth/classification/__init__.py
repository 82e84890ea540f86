"""Classifiers: training one (strategy, subset, seed) run on real and synthetic images, and the
ViT-cGAN critic's class head as a classifier (strategy `unified`)."""
