from uad.cli import main

raise SystemExit(main())
