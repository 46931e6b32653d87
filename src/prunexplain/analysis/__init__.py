"""Crowd-study answers to findings: `load` reads and validates, `stats` tests, `plots` draws.

Imports no torch and no training stage: `prunexplain analyze` starts fast on a machine that only
has the answers.
"""
