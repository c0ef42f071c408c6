# Lets `python -m unittest` (run in plugins/calc-py) import calc_agent and the
# SDK (guest-sdk/python/src) without installing anything.
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_PLUGIN = os.path.dirname(_HERE)
_SDK = os.path.join(os.path.dirname(os.path.dirname(_PLUGIN)), "guest-sdk", "python", "src")
for path in (_PLUGIN, _SDK):
    if path not in sys.path:
        sys.path.insert(0, path)
