from tlsearch.cli import main

raise SystemExit(main())
