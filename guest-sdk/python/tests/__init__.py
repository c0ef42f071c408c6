# Lets `python -m unittest` (run in guest-sdk/python) import the SDK from src/
# without installing it.
import os
import sys

_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)
