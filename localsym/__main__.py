from localsym.cli import main

raise SystemExit(main())
