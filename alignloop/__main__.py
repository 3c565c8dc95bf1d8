"""`python -m alignloop ...` is the `alignloop` command."""

from alignloop.loop.cli import main

raise SystemExit(main())
