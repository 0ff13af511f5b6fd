//! The per-message cost of the Mississippi wire format next to the native one, IO-free:
//!
//! * publish: native = the key's bytes as the header + FNV-1a; Mississippi =
//!   `term_to_binary` of the key + `phash2(key, 128)`;
//! * consume: native = the header's bytes as the key; Mississippi = `binary_to_term` of the
//!   header + its canonical encoding (the ordering key).
//!
//! For three keys: an Elixir string (the common case), an integer and a tuple.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use headwaters_amqp_consumer::etf::{self, Term};
use headwaters_amqp_consumer::shard::shard_index;

fn wire(c: &mut Criterion) {
    let mut group = c.benchmark_group("mississippi");
    group.throughput(Throughput::Elements(1));
    let keys: [(&str, Term); 3] = [
        ("binary", Term::from("user_4242")),
        ("integer", Term::from(4242)),
        ("tuple", Term::from((Term::atom("user"), 4242, "eu"))),
    ];
    let native_key = b"user_4242".to_vec();
    group.bench_function("publish/native", |b| {
        b.iter(|| {
            let header = black_box(&native_key).clone();
            (shard_index(&header, 128), header)
        });
    });
    for (name, key) in &keys {
        group.bench_function(format!("publish/mississippi/{name}"), |b| {
            b.iter(|| {
                let key = black_box(key);
                let header = key.to_etf().unwrap();
                (etf::phash2_range(key, 128), header)
            });
        });
    }
    group.bench_function("consume/native", |b| {
        b.iter(|| black_box(&native_key).to_vec());
    });
    for (name, key) in &keys {
        let header = key.to_etf().unwrap();
        group.bench_function(format!("consume/mississippi/{name}"), |b| {
            b.iter(|| {
                etf::decode(black_box(&header))
                    .unwrap()
                    .to_canonical_etf()
                    .unwrap()
            });
        });
    }
    group.finish();
}

criterion_group!(benches, wire);
criterion_main!(benches);
