"""Settings for the whole suite."""
import os

# Every distributed test runs on this one machine: gloo talks over the loopback interface (set
# before any worker or ``torchrun`` starts, which inherit it), so no test depends on the host name
# resolving to a reachable address.
os.environ.setdefault('GLOO_SOCKET_IFNAME', 'lo')
