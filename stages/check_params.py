"""Stage check_params: every params section and task spec checked (cotlab.sections) before any other stage runs.

Each root stage depends on its output, so `dvc exp run -S key=bad` fails here, in seconds, naming the key, instead
of after the stages that do not read it. The output holds no param value: a valid change leaves it byte-identical,
so it re-runs nothing downstream. This is the one stage that imports every method (tests/test_deps.py)."""
import sys
from pathlib import Path

from cotlab import tracking
from cotlab.config import flatten, load_params
from cotlab.sections import main

OUT = Path("data/params_valid.txt")

if __name__ == "__main__":
    status = main(["params.yaml"])
    if status:
        sys.exit(status)
    with tracking.stage_run("check_params", flatten(load_params("params.yaml").as_dict())):
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text("every params section and task spec is valid\n")
