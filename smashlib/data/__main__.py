"""``python -m smashlib.data docs/data.md``: regenerate the docs' table of built-in datasets."""
from smashlib.data.table import main

raise SystemExit(main())
