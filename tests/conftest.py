import os

import torch

# Small tensors on a 2-core machine: one thread is faster and keeps the suite deterministic.
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")
