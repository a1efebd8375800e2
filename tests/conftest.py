import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DET_DATA_ROOT", PROJECT_ROOT.parent / "shared" / "data"))

os.environ.setdefault("TQDM_DISABLE", "1")  # keep test logs readable; progress bars are exercised by the tools


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder; skips (or, in CI, fails) when it is absent."""
    if not (SHARED_DATA / "voc100").is_dir():
        msg = f"shared data not found at {SHARED_DATA} (set DET_DATA_ROOT or place ../shared/data beside the project)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but " + msg)
        pytest.skip(msg)
    return SHARED_DATA
