import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The project's dev tools (control plane, loopback backends) live in scripts/.
sys.path.insert(0, str(ROOT / "scripts"))
