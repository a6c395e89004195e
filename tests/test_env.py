"""The environment a run records: installed versions against requirements.lock, and how the report shows them."""
from importlib.metadata import version

from harness.env import LOCK, lock_drift
from harness.report.tables import _drift


def test_lock_drift_names_each_package_that_differs_from_the_lock(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"# a comment\npytest=={version('pytest')}\n    # via x\ntransformers==0.0.1\n"
                    f"no-such-package-here==1.0\n")
    assert lock_drift(lock) == [f"transformers {version('transformers')} (lock 0.0.1)",
                                "no-such-package-here not installed (lock 1.0)"]
    lock.write_text(f"pytest=={version('pytest')}\n")
    assert lock_drift(lock) == [] and _drift(lock_drift(lock)) == "as locked"
    assert lock_drift(tmp_path / "absent") is None and _drift(None) is None


def test_the_lock_pins_transformers_and_leaves_torch_to_the_machine():
    pins = dict(line.split("==", 1) for line in LOCK.read_text().splitlines() if "==" in line and line[0] != " ")
    assert pins["transformers"].startswith("5.") and "torch" not in pins
