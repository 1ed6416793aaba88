"""The built wheel carries every shipped data file (models/phylo/data), so installs are complete.

python .ci/check_wheel_data.py path/to/varinf-*.whl
"""

import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "models" / "phylo" / "data"

wheel = Path(sys.argv[1])
inside = set(zipfile.ZipFile(wheel).namelist())
shipped = {p.relative_to(ROOT).as_posix() for p in DATA.rglob("*") if p.is_file()}
missing = sorted(shipped - inside)
if missing:
    sys.exit(
        f"{wheel.name} lacks {len(missing)} data files, e.g. {missing[:3]}: "
        "extend [tool.setuptools.package-data] in pyproject.toml"
    )
print(f"{wheel.name}: all {len(shipped)} data files of models/phylo/data are inside")
