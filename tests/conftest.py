import torch

# Tests use tiny tensors: one thread avoids OpenMP oversubscription, which makes
# a 2-core machine that is also running a Snakemake subprocess 10-20x slower.
torch.set_num_threads(1)


# The real SLURM cluster first (~2.5 min, mostly waiting on job start-ups): under
# `pytest -n 2 --dist loadfile` (make test) it then runs beside the other worker's short
# files instead of alone at the end. (Putting the two workflow files first as well made the
# suite slower: 10.0 min against 9.0.)
LONG_FIRST = ("test_slurm_cluster.py",)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
