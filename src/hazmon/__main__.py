from hazmon.cli import main

raise SystemExit(main())
