"""`qianfan-etl` with the fault hook armed from QIANFAN_ETL_FAULT, for tests that need a run
to die, stop, raise or pause at a named point (see etl/faults.py).

Run as a script (`python tests/faulty_cli.py sync ...`): the console script never arms the
hook, so this file is the only way a plan in the environment takes effect.
"""

import os

from etl import faults
from etl.cli import main

FAULT_VAR = "QIANFAN_ETL_FAULT"

if __name__ == "__main__":
    faults.arm(os.environ.get(FAULT_VAR))
    main()
