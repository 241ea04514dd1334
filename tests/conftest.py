import os

os.environ.setdefault("MPLBACKEND", "Agg")
# The suite runs small models on a 2-core machine, with notebook kernels beside the test process:
# one intra-op thread per process avoids oversubscription (measured: 5-epoch MLP training 4.1 s on
# one thread vs 31 s on two under load). Kernels started by papermill inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
