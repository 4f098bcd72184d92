"""`python -m membrane` is the `membrane` command."""

from membrane.cli.main import main

raise SystemExit(main())
