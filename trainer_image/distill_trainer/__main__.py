"""`python -m distill_trainer run job.yaml [...]`: see distill_trainer/cli.py for the options."""

import sys

from distill_trainer.cli import main as _main


def main() -> None:
    sys.exit(_main())


if __name__ == "__main__":
    main()
