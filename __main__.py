"""``python -m plugformer`` (and ``torchrun -m plugformer``) runs the CLI."""

from plugformer.core.cli import main

raise SystemExit(main())
