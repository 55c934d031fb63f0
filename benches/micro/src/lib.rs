//! Nothing but a home for `benches/`: criterion micro-benchmarks of
//! jobgate's hot paths (`cargo bench -p jobgate-micro`).
