import sys
from pathlib import Path

# helpers shared by test files (timm_suite, hub_server) live next to them
sys.path.insert(0, str(Path(__file__).parent))
