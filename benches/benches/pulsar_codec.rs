//! The Pulsar WebSocket codec per message: encode a publish frame, decode its receipt and
//! decode a delivered message frame, for 100-byte and 10 KiB payloads.

use std::hint::black_box;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use headwaters_pulsar_ws::{ConsumerFrame, OutgoingMessage, Receipt};

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("pulsar_codec");
    group.throughput(Throughput::Elements(1));
    for size in [100usize, 10 * 1024] {
        let message = OutgoingMessage::new(vec![b'x'; size])
            .with_key("user-42")
            .with_property("origin", "bench");
        let receipt = r#"{"result":"ok","messageId":"CLcBEOgHIAA=","context":"123456","errorCode":0,"schemaVersion":0}"#;
        let delivered = format!(
            r#"{{"messageId":"CLcBEOgHIAA=","payload":"{}","properties":{{"origin":"bench"}},"publishTime":"2026-11-21T10:00:00.123-07:00","redeliveryCount":0,"key":"user-42"}}"#,
            BASE64.encode(vec![b'x'; size])
        );
        group.bench_function(format!("encode+receipt+message/{size}B"), |b| {
            b.iter(|| {
                let frame = black_box(&message).encode("123456");
                let r = Receipt::decode(black_box(receipt)).unwrap();
                let m = ConsumerFrame::decode(black_box(&delivered)).unwrap();
                (frame.len(), r.result.is_ok(), m)
            });
        });
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
