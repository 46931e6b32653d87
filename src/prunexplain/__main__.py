"""`python -m prunexplain` (and `torchrun -m prunexplain train ...` for DDP)."""

from prunexplain.cli import main

main()
