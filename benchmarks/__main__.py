"""`make bench`: every benchmarks/bench_*.py in turn; each prints its figures measured side by side."""

import importlib
import logging
import pkgutil

import benchmarks

logging.basicConfig(level=logging.WARNING)
for module in sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_")):
    print(f"\n== {module} ==", flush=True)
    importlib.import_module(f"benchmarks.{module}").main()
