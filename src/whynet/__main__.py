"""``python -m whynet`` is the ``whynet`` command."""

from whynet.cli import main

raise SystemExit(main())
