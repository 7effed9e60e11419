"""Run the math-grader service: ``python -m distill_grader --port 8000`` (``--help`` for flags).

Settings come from ``GRADER_*`` environment variables, overridden by flags (see
``distill_grader.config``). This is the command of the math-grader Deployment.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import uvicorn

from distill_grader.config import load_settings
from distill_grader.service import create_app


def main(argv: Sequence[str] | None = None) -> None:
    settings = load_settings(argv)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.graceful_timeout_s,
    )


if __name__ == "__main__":
    main()
