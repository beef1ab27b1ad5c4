import sys

from airflow_tf_ckpt.cli import main

sys.exit(main())
