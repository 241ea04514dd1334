import os

os.environ.setdefault("MPLBACKEND", "Agg")
# The suite runs small models on a 2-core machine, with notebook kernels beside the test process:
# one intra-op thread per process avoids oversubscription (measured: 5-epoch MLP training 4.1 s on
# one thread vs 31 s on two under load). Kernels started by papermill inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def float64_default():
    """Oracle comparisons run in float64; the global default dtype is restored afterwards.

    Modules that compare against the oracle use it for every test with
    ``pytestmark = pytest.mark.usefixtures("float64_default")``.
    """
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread is as fast and avoids oversubscribing a shared CPU (the
    thread count is restored afterwards). Modules use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

