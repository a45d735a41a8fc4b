import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The project's dev tools (control plane, loopback backends) live in scripts/; its release
# facts (version, distributions, image name) in distributions/layout.py.
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "distributions"))


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: object) -> None:
    """SIGTERM (a CI job's timeout, `kill`) ends the run the way Ctrl-C does: pytest then
    tears down the session's fixtures, which stop the control planes, Redis, Consul and
    operators they started. With Python's default the run died at once and left them."""
    signal.signal(signal.SIGTERM, _interrupt)
