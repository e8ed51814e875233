from sedlib.cli import main

raise SystemExit(main())
