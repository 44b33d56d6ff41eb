import os

import pytest
import torch

# Tests share 2 cores with nothing else in CI; one intra-op thread per test process keeps
# timings stable and the suite deterministic.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


# The suite's exit status, kept for the hard exit below.
_EXIT_STATUS = [0]


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS[0] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the test process with the suite's own exit status once pytest has finished, without
    the interpreter's final teardown of C extensions (torch, ray, grpc). A clean-clone CI run
    printed "969 passed" and then died with a segmentation fault in that teardown, after every
    test and report had run, which made a green suite exit non-zero. A failed test still exits
    non-zero (its status is what is passed on). GRANULARITY_TEST_HARD_EXIT=0 turns this off."""
    if os.environ.get("GRANULARITY_TEST_HARD_EXIT", "1") == "0":
        return
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_EXIT_STATUS[0])


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from granularity.cli.main import main

    def run(*args: str):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session")
def make_fmnist(tmp_path_factory):
    """Factory of tiny IDX files in the Fashion-MNIST layout: 10 classes, class c a bright
    stripe at rows 2c..2c+2 over uniform noise (learnable in a few steps). Returns the folder."""
    import numpy as np

    from granularity.data.idx import write_idx

    def make(n_train: int = 200, n_test: int = 100):
        root = tmp_path_factory.mktemp("fm")
        rng = np.random.default_rng(0)
        for part, n in (("train", n_train), ("t10k", n_test)):
            y = (np.arange(n) % 10).astype(np.uint8)
            x = rng.integers(0, 50, size=(n, 28, 28)).astype(np.uint8)
            for c in range(10):
                x[y == c, 2 * c : 2 * c + 3, :] = 220
            write_idx(root / f"{part}-images-idx3-ubyte", x)
            write_idx(root / f"{part}-labels-idx1-ubyte", y)
        return root

    return make


@pytest.fixture
def one_thread():
    """One intra-op thread: on tiny tensors a second thread only adds synchronisation (and CI
    has 2 shared cores). Restores the previous count afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
