"""Suite-wide settings: one torch thread (the tests' models are small, and on a 2-core machine a
second thread mostly waits), and matplotlib without a display."""

import matplotlib
import torch

matplotlib.use("Agg")
torch.set_num_threads(1)
