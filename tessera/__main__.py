"""``python -m tessera`` runs the command line."""

from tessera.core.cli import main

raise SystemExit(main())
