"""Stand-in for get-pip.py, which ansible-test downloads from a host unreachable here.

ansible-test runs it as `python get_pip.py <pip install arguments>` inside each virtual
environment it creates. ensurepip installs the bundled pip; pip then installs what was asked
for, using the machine's own pip configuration (index, CA bundle).
"""

import ensurepip
import os
import subprocess
import sys

ensurepip.bootstrap(upgrade=True)
# ensurepip points PIP_CONFIG_FILE at /dev/null, which would hide the machine's pip configuration.
os.environ.pop("PIP_CONFIG_FILE", None)
GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}
args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", *args]))
