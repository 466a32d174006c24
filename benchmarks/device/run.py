"Launcher for the device machine: cmrl from this checkout, packages the image lacks from .gpu (appended after the image's own)"
import os, sys
here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(os.path.dirname(here))  # the repository root (cmrl/)
sys.path.insert(0, root)
sys.path += [os.path.join(root, '.gpu', 'bin'), os.path.join(root, '.gpu', 'site_py.zip')]  # carried packages
from cmrl.cli import main
sys.exit(main())
