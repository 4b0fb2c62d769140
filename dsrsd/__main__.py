"""``python -m dsrsd`` entry point."""

from dsrsd.cli import main

raise SystemExit(main())
