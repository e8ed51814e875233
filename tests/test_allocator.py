"""glibc malloc thresholds of a sedlib process (sedlib.allocator)."""

import os
import subprocess
import sys

import pytest

from sedlib import allocator

# Three 8 MiB zero-filled blocks taken and given back, 20 times, as a training step's buffers are: with glibc's
# defaults the freed 24 MiB at the heap's top exceed its (adapted) trim threshold and are returned to the system,
# so every cycle faults them in again (~6000 pages); kept in the process, they are reused.
PROBE = """
import resource, sys
from sedlib.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
def cycle():
    blocks = [bytearray(8 << 20) for _ in range(3)]
    del blocks
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    cycle()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str, **env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if k not in allocator.ENVIRONMENT}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env={**clean, **env}, capture_output=True, text=True,
                         check=True)  # fmt: skip
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt: Linux only")
def test_freed_blocks_stay_in_the_process_unless_the_user_set_thresholds():
    """Measured: 83 k minor faults with the defaults, 0 with the raised thresholds. A threshold in the user's
    environment wins: nothing is changed."""
    applied, faults = page_faults("default")
    assert applied == "None" and faults > 40_000
    applied, faults = page_faults("keep")
    assert applied == "True" and faults < 2_000
    applied, faults = page_faults("keep", MALLOC_TRIM_THRESHOLD_="131072")
    assert applied == "False" and faults > 40_000


def test_the_entry_point_applies_it(repo_root):
    """``python -m sedlib`` calls keep_freed_memory before the command runs."""
    main = (repo_root / "sedlib" / "__main__.py").read_text()
    assert main.index("keep_freed_memory()") < main.index("raise SystemExit(main())")
