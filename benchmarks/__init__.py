"""vitgraph.benchmarks: the benchmark harness, its suites, reports and plots."""
