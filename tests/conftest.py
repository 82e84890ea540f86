import torch

# Tests use tiny tensors: one thread avoids OpenMP oversubscription, which makes
# a 2-core machine that is also running a Snakemake subprocess 10-20x slower.
torch.set_num_threads(1)
