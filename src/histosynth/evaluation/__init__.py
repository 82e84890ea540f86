"""Measuring images: feature extractors and statistics, FID / KID / precision / recall and
classification metrics, checkpoint selection, the real-vs-real reference and convergence
verdict, the quality of kept sets, and the filters that choose which synthetic images to keep."""
