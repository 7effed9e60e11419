"""Imported by the pool's forkserver: build math-verify's parsers once, before any fork.

Every worker (and every replacement of a killed one) is forked from the forkserver and inherits
the built parsers and warm caches, so it is ready in milliseconds instead of the second or more
that a first grade costs (a preempted or timed-out worker's replacement is on the critical path
of the request that waits for it).
"""

from distill_grader.grading import warm_up

warm_up()
