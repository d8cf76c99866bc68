//! Placeholder replaced by the benchmark suite (see BENCHMARKS.md).
fn main() {}
