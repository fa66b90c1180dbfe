from corral.entry import main

raise SystemExit(main())
