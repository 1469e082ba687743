import sys

from . import memory
from .cli import main

memory.tune_allocator()  # cohort-sized frames: see memory.py
sys.exit(main())
