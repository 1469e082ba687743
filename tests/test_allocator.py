"""Freed column-sized arrays go back to the operating system once `analytics` is imported (allocator.py)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
import analytics
import numpy as np

def resident_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

big = np.ones(16 * 2**20 // 8); del big     # a freed mmapped block raises glibc's own threshold
before = resident_mb()
arrays, small = [], []
for _ in range(100):                         # 800 MB of 8 MB columns with small live arrays between
    arrays.append(np.ones(2**20))
    small.append(np.ones(128))
del arrays
print(resident_mb() - before)
"""


def test_freed_cohort_arrays_do_not_stay_resident():
    out = subprocess.run([sys.executable, "-c", PROBE, str(ROOT)], capture_output=True, text=True, check=True)
    assert float(out.stdout) < 50  # without the setting glibc keeps all 800 MB
