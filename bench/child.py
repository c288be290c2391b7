"""One system's run of one scenario on one database: `python -m bench.child SYSTEM SCENARIO URL PARAMS`.

Prints `RESULT {json}` (see bench/common.py) and exits at once: DBOS leaves sleeping
threads behind, which a normal interpreter exit would wait for.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

from bench.common import Result


def main() -> None:
    system, scenario, url, params_json = sys.argv[1:5]
    params = json.loads(params_json)
    result: Result | None
    try:
        if system == "raw":
            from bench import raw

            result = raw.run(url, params)
        elif scenario == "startup":
            from bench import startup

            result = startup.run(system, params)
        elif system == "stepstone":
            from bench import ss_side

            result = ss_side.run(scenario, url, params)
        elif system == "dbos":
            from bench import dbos_side

            result = dbos_side.run(scenario, url, params)
        else:
            raise SystemExit(f"unknown system {system!r}")
        if result is not None:
            result.emit()
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
