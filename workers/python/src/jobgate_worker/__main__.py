"""``python -m jobgate_worker module:attr`` is the same as ``jobgate-worker``."""

from .cli import main

raise SystemExit(main())
