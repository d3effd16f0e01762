"""Settings for the whole suite."""
import os
import sys

# Every distributed test runs on this one machine: gloo talks over the loopback interface (set
# before any worker or ``torchrun`` starts, which inherit it), so no test depends on the host name
# resolving to a reachable address.
os.environ.setdefault('GLOO_SOCKET_IFNAME', 'lo')

# The suite's shared modules (reference.py, layer_helpers.py, mm_helpers.py, tool_helpers.py) sit
# in tests/; the tests in tests/core (torch only), tests/mm, tests/tools, and tests/experiments and
# tests/benchmarks for the checkout's folders of those names, which the tests import as the tools
# do: with the checkout's root on sys.path.
TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TESTS)
sys.path.insert(1, os.path.dirname(TESTS))
