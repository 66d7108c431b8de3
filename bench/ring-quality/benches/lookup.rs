//! Criterion: lookup of a random six-digit id (key hashing included) at N = 10 and 1000,
//! and build at N = 100, for every subject of the report.
//!
//! Run: `cargo bench -p ringlb-ring-quality` (add a filter such as `lookup/N=1000`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ringlb_ring_quality::{members, random_ids, subjects};

fn lookup(c: &mut Criterion) {
    let ids = random_ids(4096, 0x5eed_0002);
    for n in [10usize, 1000] {
        let mut group = c.benchmark_group(format!("lookup/N={n}"));
        group
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
            .sample_size(20);
        for subject in subjects() {
            let built = subject.build(&members(n));
            group.bench_function(BenchmarkId::from_parameter(subject.name), |b| {
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) % ids.len();
                    built.lookup_raw(black_box(&ids[i]))
                });
            });
        }
        group.finish();
    }
}

fn build(c: &mut Criterion) {
    let set = members(100);
    let mut group = c.benchmark_group("build/N=100");
    group
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .sample_size(10);
    for subject in subjects() {
        group.bench_function(BenchmarkId::from_parameter(subject.name), |b| {
            b.iter(|| subject.build_raw(black_box(&set)));
        });
    }
    group.finish();
}

criterion_group!(benches, lookup, build);
criterion_main!(benches);
