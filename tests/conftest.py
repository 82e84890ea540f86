import torch

# Tests use tiny tensors: one thread avoids OpenMP oversubscription, which makes
# a 2-core machine that is also running a Snakemake subprocess 10-20x slower.
torch.set_num_threads(1)


# The longest files first: under `pytest -n 2 --dist loadfile` (make test) each runs beside
# the other worker's short files instead of alone at the end. The real SLURM cluster
# (test_slurm_cluster.py) is mostly waiting on job start-ups: ~3 minutes.
LONG_FIRST = ("test_slurm_cluster.py",)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.path.name not in LONG_FIRST)  # stable: the rest keep their order
