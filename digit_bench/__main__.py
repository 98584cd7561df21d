"""`python -m digit_bench ...` is the `digit-bench` command."""

from digit_bench.cli import main

raise SystemExit(main())
