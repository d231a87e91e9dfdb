from agent_sre.pipeline.cli.main import main

raise SystemExit(main())
