"""Freed column-sized arrays go back to the operating system once an entry point has tuned the allocator
(analytics/memory.py), and every entry point does."""
import ast
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
from analytics import memory
import numpy as np
memory.tune_allocator()

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


THREADS_PROBE = """
import sys, threading
sys.path.insert(0, sys.argv[1])
from analytics import memory
import numpy as np
if sys.argv[2] == "tuned":
    memory.tune_allocator()

def resident_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

small = []
def work():                                  # a worker thread's 1 MB pieces (under the mmap threshold), freed
    arrays = []
    for _ in range(300):
        arrays.append(np.ones(2**17))
        small.append(np.ones(1024))          # small live arrays between them: the freed pieces stay resident
    del arrays
worker = threading.Thread(target=work)
worker.start(); worker.join()
before = resident_mb()
mine = [np.ones(2**17) for _ in range(300)]  # the same again in the main thread
print(resident_mb() - before)
"""


def test_memory_a_thread_frees_is_reused_by_the_others():
    """One arena for every thread: what the course's block threads or the bootstrap's free is used again by
    the next step instead of staying resident beside it (glibc's default gives each thread its own)."""
    tuned = subprocess.run([sys.executable, "-c", THREADS_PROBE, str(ROOT), "tuned"], capture_output=True, text=True,
                           check=True)
    default = subprocess.run([sys.executable, "-c", THREADS_PROBE, str(ROOT), "default"], capture_output=True,
                             text=True, check=True)
    assert float(tuned.stdout) < 100 < float(default.stdout)  # 300 MB asked for again


def test_every_entry_point_tunes_the_allocator():
    """The command line and the dashboard call memory.tune_allocator() themselves: importing analytics does not."""
    for path in (ROOT / "analytics" / "__main__.py", ROOT / "dashboard.py"):
        calls = [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)
                 and isinstance(node.func, ast.Attribute) and node.func.attr == "tune_allocator"]
        assert calls, f"{path.name} does not call memory.tune_allocator()"


def test_what_a_step_lets_go_is_handed_back_before_the_next(demo_db, monkeypatch):
    """Forgetting the clinic's fits and building the cohort's summaries each end by handing freed memory back
    (at 100,000 patients ~150 MB each, otherwise resident under the next step's peak)."""
    from analytics import intervals, memory
    from analytics.access import SYSTEM, DataAccess
    from analytics.screens import cohort
    from analytics.screens.workspace import Workspace

    released = []
    monkeypatch.setattr(memory, "release_freed", lambda: released.append(True))
    intervals.forget_fits()
    assert released == [True]
    ws = Workspace(DataAccess(demo_db, SYSTEM))
    # the summaries' own figures are tested in test_cohort_summary: here only what happens after them
    monkeypatch.setattr(cohort, "cohort_base", lambda *args: SimpleNamespace(has_infusions=False))
    monkeypatch.setattr(cohort, "cohort_summary", lambda *args: "summary")
    monkeypatch.setattr(Workspace, "frames", lambda self: {"patients": None, "treatments": None, "assessments": None})
    monkeypatch.setattr(Workspace, "cycles", lambda self, code: None)
    released.clear()
    assert cohort.cohort_tables(ws, "PHQ-9") == "summary"
    assert released == [True]
    cohort.cohort_tables(ws, "PHQ-9")  # built once: nothing more to hand back
    assert released == [True]
