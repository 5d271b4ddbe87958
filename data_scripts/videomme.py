#!/usr/bin/env python
"""Prepare videomme under DATAS/ (download, unpack, convert to the official layout, verify): see --help."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from prunevid.data import script_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(script_main("videomme"))
