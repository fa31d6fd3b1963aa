"""Pure functions on tensors, one folder per method.

Every op folder has ``naive.py`` (the paper's definition), ``chunk.py`` (the parallel /
chunked training form) and ``recurrent.py`` (the decode form). Layout is ``[B, T, H, D]``.
"""
