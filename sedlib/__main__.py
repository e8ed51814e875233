from sedlib.allocator import keep_freed_memory
from sedlib.cli import main

keep_freed_memory()
raise SystemExit(main())
