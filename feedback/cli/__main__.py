"""`python -m feedback.cli ...` (what `torchrun -m feedback.cli` runs on every rank)."""

from .main import main

if __name__ == "__main__":
    raise SystemExit(main())
