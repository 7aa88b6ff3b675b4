"""A validation's log says what matters: our verdict, not Great Expectations' import-time bookkeeping.

Importing great_expectations 1.x logs "Skipping registering function ..." 214 times at INFO (and a few more lines
while it builds a context): in a task log they were 217 of validate_data's 228 lines. They are logged while GX's
modules load, so this runs in a fresh interpreter, as an Airflow task does, with the root logger at INFO.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

_CODE = """
import json, logging, sys
records = []

class Keep(logging.Handler):
    def emit(self, record):
        records.append([record.levelname, record.name, record.getMessage()])

logging.basicConfig(level=logging.INFO, handlers=[Keep()])
from tests.data.conftest import make_splits
from pipeline.config import DataValidationConfig
from pipeline.data.validate import validate_splits

config = DataValidationConfig(min_rows=100, min_class_fraction=0.1, max_class_fraction=0.6, max_text_length=500)
validate_splits(make_splits("image"), config, __import__("pathlib").Path(sys.argv[1]))
logging.getLogger("great_expectations.some.module").warning("a warning of GX's own")
print(json.dumps({"records": records, "gx_loaded": "great_expectations" in sys.modules}))
"""


def test_a_passing_validation_logs_its_verdict_and_gx_warnings_only(tmp_path):
    done = subprocess.run([sys.executable, "-c", _CODE, str(tmp_path / "docs")], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "GX_ANALYTICS_ENABLED": "false"})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["gx_loaded"]
    records = result["records"]
    assert [(level, name) for level, name, _ in records] == [
        ("INFO", "pipeline.data.validate"), ("WARNING", "great_expectations.some.module")], records
    assert records[0][2].startswith("data validation passed: 120 rows")
    assert done.stderr == ""
