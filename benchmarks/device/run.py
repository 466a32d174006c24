"""Launcher for the device machine: `cmrl` from this checkout (`device.sh` puts the repository root and the carried
packages in `.gpu/bin` on PYTHONPATH)"""
import sys
from cmrl.cli import main
sys.exit(main())
