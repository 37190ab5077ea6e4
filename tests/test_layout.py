import subprocess
import sys


def test_library_never_imports_the_trainer():
    code = ("import sys, repdiag, repdiag.features, repdiag.diagnose, repdiag.commands; "
            "print([m for m in sys.modules if m == 'train' or m.startswith('train.')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_python_m_entry_points_show_help():
    for mod in ("repdiag", "train"):
        r = subprocess.run([sys.executable, "-m", mod, "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "usage:" in r.stdout
