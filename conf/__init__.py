"""alignlab's Hydra configs. In a source tree they are read from this directory; an installed alignlab ships
them as the package ``alignlab.conf`` (setup.py) and Hydra reads them through ``pkg://alignlab.conf``."""
