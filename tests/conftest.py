"""Test-suite settings: the hypothesis profile and its seed.

Every property test fixes its own example count (``@settings(max_examples=...)``); the
profile adds what CI needs to reproduce a failure: no deadline (a shared 2-core machine
is noisy), the failing example's blob printed, and one seed for the whole run, chosen
at random unless given, printed in the header:

    pytest --hypothesis-seed=N        # re-run CI's examples exactly (N from its header)
    FEASCOMP_HYPOTHESIS_SEED=N pytest # the same
"""
import os
import random

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("feascomp", deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("feascomp")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # before hypothesis' own pytest_configure reads the option and seeds its runs
    if config.getoption("hypothesis_seed", None) is None:
        seed = os.environ.get("FEASCOMP_HYPOTHESIS_SEED") or str(random.SystemRandom().randrange(2**32))
        config.option.hypothesis_seed = seed
    # pytest-xdist's workers start after this and inherit the environment: one seed for all
    os.environ["FEASCOMP_HYPOTHESIS_SEED"] = str(config.getoption("hypothesis_seed"))


def pytest_report_header(config):
    seed = config.getoption("hypothesis_seed", None)
    return f"hypothesis seed: {seed} (reproduce with --hypothesis-seed={seed})"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    # the header is hidden under -q (as CI runs): say the seed again at the end
    seed = config.getoption("hypothesis_seed", None)
    terminalreporter.write_line(f"hypothesis seed: {seed} (reproduce with --hypothesis-seed={seed})")
