//! Throttling and expired shard iterators, injected by an HTTP proxy in front of the server:
//! the reader backs off or re-creates its iterator, and no record is lost or repeated.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use headwaters_batch_flusher::MemoryCheckpoints;
use headwaters_kinesis::{KinesisConfig, KinesisSource, KinesisWorker, ReadSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{
    Recorder, create_stream, put_numbered, run_until, stream_name, worker_config,
};

/// An HTTP/1.1 proxy that answers the next `GetRecords` calls with the queued errors and
/// forwards everything else.
struct FaultyKinesis {
    url: String,
    faults: Arc<Mutex<VecDeque<&'static str>>>,
    served: Arc<Mutex<Vec<&'static str>>>,
}

/// One HTTP message (request or response) from `socket`: its bytes and its header names
/// and values, or `None` at EOF.
async fn read_message(
    socket: &mut TcpStream,
    buf: &mut Vec<u8>,
    request: bool,
) -> Option<(Vec<u8>, Vec<(String, String)>)> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let parsed = if request {
            let mut req = httparse::Request::new(&mut headers);
            req.parse(buf).ok()?
        } else {
            let mut resp = httparse::Response::new(&mut headers);
            resp.parse(buf).ok()?
        };
        if let httparse::Status::Complete(head) = parsed {
            let fields: Vec<(String, String)> = headers
                .iter()
                .take_while(|h| !h.name.is_empty())
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let length: usize = fields
                .iter()
                .find(|(n, _)| n == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < head + length {
                let mut chunk = [0u8; 16384];
                let n = socket.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let message: Vec<u8> = buf.drain(..head + length).collect();
            return Some((message, fields));
        }
        let mut chunk = [0u8; 16384];
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

impl FaultyKinesis {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let faults: Arc<Mutex<VecDeque<&'static str>>> = Arc::default();
        let served: Arc<Mutex<Vec<&'static str>>> = Arc::default();
        let (f, s) = (Arc::clone(&faults), Arc::clone(&served));
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (faults, served, upstream) = (Arc::clone(&f), Arc::clone(&s), upstream.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Some((request, headers)) =
                        read_message(&mut client, &mut buf, true).await
                    {
                        let get_records = headers
                            .iter()
                            .any(|(n, v)| n == "x-amz-target" && v.ends_with(".GetRecords"));
                        let fault = if get_records {
                            faults.lock().unwrap().pop_front()
                        } else {
                            None
                        };
                        let response = match fault {
                            Some(kind) => {
                                served.lock().unwrap().push(kind);
                                let body =
                                    format!("{{\"__type\":\"{kind}\",\"message\":\"injected\"}}");
                                format!(
                                    "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n{body}",
                                    body.len()
                                )
                                .into_bytes()
                            }
                            None => {
                                let Ok(mut server) = TcpStream::connect(&upstream).await else {
                                    return;
                                };
                                if server.write_all(&request).await.is_err() {
                                    return;
                                }
                                let mut rbuf = Vec::new();
                                let Some((response, _)) =
                                    read_message(&mut server, &mut rbuf, false).await
                                else {
                                    return;
                                };
                                response
                            }
                        };
                        if client.write_all(&response).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            url,
            faults,
            served,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kinesis-compatible server: cargo xtask integration (kinesalite) or KINESIS_ENDPOINT"]
async fn throttling_and_expired_iterators_lose_and_repeat_nothing() {
    let stream = stream_name("faults");
    create_stream(&stream, 1).await;
    put_numbered(&stream, 6, 0..300).await;
    let proxy = FaultyKinesis::start(std::env::var("KINESIS_ENDPOINT").unwrap()).await;
    proxy.faults.lock().unwrap().extend([
        "ProvisionedThroughputExceededException",
        "ExpiredIteratorException",
        "ProvisionedThroughputExceededException",
        "ProvisionedThroughputExceededException",
    ]);
    // Pages of 40: the faults fall between pages, after records were handed on.
    let source = KinesisSource::new(
        &KinesisConfig::new("us-east-1")
            .with_endpoint(&proxy.url)
            .with_credentials("test", "test", None),
        &stream,
        ReadSettings::default()
            .with_batch_size(40)
            .with_idle_time(Duration::from_millis(50))
            .with_backoff(Duration::from_millis(20), Duration::from_millis(200)),
    )
    .unwrap();
    let recorder = Recorder::default();
    let worker = KinesisWorker::new(
        source,
        recorder.clone(),
        MemoryCheckpoints::new(),
        worker_config(),
    );
    let wait = async {
        recorder.wait_for(300, Duration::from_secs(60)).await;
        // The late expiry falls on an idle poll if the records were all read by then.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while proxy.served.lock().unwrap().len() < 5 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "faults served: {:?}",
                proxy.served.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // What came after the last fault is in too.
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // A first page goes through, then the faults, then another expiry mid-stream.
    let inject_later = async {
        recorder.wait_for(120, Duration::from_secs(60)).await;
        proxy
            .faults
            .lock()
            .unwrap()
            .push_back("ExpiredIteratorException");
    };
    run_until(&worker, async { tokio::join!(wait, inject_later) }).await;
    assert_eq!(recorder.total(), 300, "nothing repeated");
    assert_eq!(recorder.distinct(), 300, "nothing lost");
    recorder.assert_in_order_per_key(0);
    let metrics = worker.source().metrics();
    assert_eq!(metrics.expired_iterators(), 2);
    assert_eq!(metrics.throttled(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_accepts_and_says_nothing_fails_the_call_in_time() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let source = KinesisSource::new(
        &KinesisConfig::new("us-east-1")
            .with_endpoint(url)
            .with_credentials("test", "test", None)
            .with_timeouts(Duration::from_millis(500), Duration::from_secs(1)),
        "silent",
        ReadSettings::default(),
    )
    .unwrap();
    let worker = KinesisWorker::new(
        source,
        Recorder::default(),
        MemoryCheckpoints::new(),
        worker_config(),
    );
    let started = std::time::Instant::now();
    let error = worker.list_shards().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let text = error.to_string();
    assert!(
        text.contains("ListShards") && text.contains("silent"),
        "{text}"
    );
    assert!(
        std::error::Error::source(&error).is_some(),
        "the SDK error is kept as the source"
    );
}

#[test]
fn no_credentials_is_a_clear_error() {
    let error = KinesisConfig::new("us-east-1").client().unwrap_err();
    assert!(error.to_string().contains("AWS_ACCESS_KEY_ID"), "{error}");
}
