"""tokengate's load-testing kit: token pools, a load driver and its report (`python -m loadtests`)."""
