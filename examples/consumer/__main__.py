import sys

from examples.consumer.main import main

sys.exit(main())
