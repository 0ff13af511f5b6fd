//! Batch a Kinesis stream into PostgreSQL, erlmld-style: one batch processor per shard, rows
//! written 500 at a time, checkpoints (and shard leases, so several instances can share the
//! stream) in the same database. A row's key is (stream, shard, sequence number,
//! sub-sequence): a record read again after a restart is written once.
//!
//! ```text
//! DATABASE_URL=postgres://user:pass@127.0.0.1:5432/db \
//! KINESIS_ENDPOINT=http://127.0.0.1:4567 \
//! cargo run -p headwaters --features kinesis --example kinesis_to_postgres -- STREAM [--demo N]
//! ```
//!
//! Without `KINESIS_ENDPOINT` it talks to AWS with the usual `AWS_*` variables. `--demo N`
//! first creates the stream (2 shards) if it is missing and puts N records — half plain, half
//! in KPL aggregates — then reads until every one of them is in the table and exits. Without
//! `--demo` it runs until Ctrl-C, then flushes, checkpoints and releases its shards.

use std::time::Duration;

use anyhow::{Context, bail};
use headwaters::flusher::{
    Added, FlushKind, Flusher, FlusherFactory, PostgresCheckpoints, ProcessorConfig, Schedule,
    Token,
};
use headwaters::kinesis::{
    KinesisConfig, KinesisRecord, KinesisSource, KinesisWorker, ReadSettings, WorkerConfig, kpl,
};
use tokio_postgres::NoTls;

const TABLE: &str = "kinesis_records";
const BATCH: usize = 500;

/// Writes rows in batches of up to 500, one INSERT per flush.
struct Rows {
    client: tokio_postgres::Client,
    stream: String,
    pending: Vec<(KinesisRecord, Token)>,
}

impl Flusher for Rows {
    type Record = KinesisRecord;
    type Error = tokio_postgres::Error;

    async fn add_record(
        &mut self,
        record: KinesisRecord,
        token: Token,
    ) -> Result<Added<KinesisRecord>, Self::Error> {
        if self.pending.len() >= BATCH {
            return Ok(Added::Full(record));
        }
        self.pending.push((record, token));
        Ok(Added::Added)
    }

    async fn flush(&mut self, _: FlushKind) -> Result<Vec<Token>, Self::Error> {
        if self.pending.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = format!(
            "INSERT INTO {TABLE} (stream, shard, sequence, sub, partition_key, data) VALUES "
        );
        let mut params: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> = Vec::new();
        for (i, (r, _)) in self.pending.iter().enumerate() {
            let n = i * 6;
            sql.push_str(&format!(
                "{}(${}, ${}, ${}, ${}, ${}, ${})",
                if i == 0 { "" } else { ", " },
                n + 1,
                n + 2,
                n + 3,
                n + 4,
                n + 5,
                n + 6
            ));
            params.push(Box::new(self.stream.clone()));
            params.push(Box::new(r.shard_id.to_string()));
            params.push(Box::new(r.sequence_number.clone()));
            params.push(Box::new(r.sub.map_or(-1, |s| i64::from(s.index))));
            params.push(Box::new(r.partition_key.clone()));
            params.push(Box::new(r.data.to_vec()));
        }
        sql.push_str(" ON CONFLICT DO NOTHING");
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| &**p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        self.client.execute(&sql, &refs).await?;
        Ok(self.pending.drain(..).map(|(_, t)| t).collect())
    }
}

/// One database connection per shard's flusher: (database URL, stream).
struct Sink(String, String);

impl FlusherFactory for Sink {
    type Flusher = Rows;

    async fn init(&self, _shard: &str) -> Result<Rows, tokio_postgres::Error> {
        Ok(Rows {
            client: connect(&self.0).await?,
            stream: self.1.clone(),
            pending: Vec::new(),
        })
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("PostgreSQL connection ended: {e}");
        }
    });
    Ok(client)
}

/// Create the stream if missing and put `n` records: half plain, half in aggregates of 50.
async fn demo_records(config: &KinesisConfig, stream: &str, n: usize) -> anyhow::Result<()> {
    use aws_sdk_kinesis::primitives::Blob;
    let client = config.client()?;
    if client
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .is_err()
    {
        client
            .create_stream()
            .stream_name(stream)
            .shard_count(2)
            .send()
            .await
            .context("CreateStream")?;
    }
    for _ in 0..200 {
        let summary = client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await?;
        if summary
            .stream_description_summary
            .is_some_and(|s| s.stream_status == aws_sdk_kinesis::types::StreamStatus::Active)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let plain = n / 2;
    for i in 0..plain {
        client
            .put_record()
            .stream_name(stream)
            .partition_key(format!("order-{}", i % 20))
            .data(Blob::new(format!("plain record {i}")))
            .send()
            .await
            .context("PutRecord")?;
    }
    let users: Vec<(String, String)> = (plain..n)
        .map(|i| {
            (
                format!("order-{}", i % 20),
                format!("aggregated record {i}"),
            )
        })
        .collect();
    for chunk in users.chunks(50) {
        let data = kpl::aggregate(chunk.iter().map(|(k, d)| (k.as_str(), None, d.as_bytes())));
        client
            .put_record()
            .stream_name(stream)
            .partition_key(&chunk[0].0)
            .data(Blob::new(data.to_vec()))
            .send()
            .await
            .context("PutRecord")?;
    }
    println!(
        "put {n} records into {stream} ({plain} plain, {} in KPL aggregates)",
        n - plain
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(stream) = args.next() else {
        bail!("usage: kinesis_to_postgres STREAM [--demo N]");
    };
    let demo: Option<usize> = match (args.next().as_deref(), args.next()) {
        (Some("--demo"), Some(n)) => Some(n.parse().context("--demo N")?),
        (None, _) => None,
        _ => bail!("usage: kinesis_to_postgres STREAM [--demo N]"),
    };
    let database = std::env::var("DATABASE_URL")
        .context("set DATABASE_URL, e.g. postgres://user:pass@127.0.0.1:5432/db")?;
    let mut config = KinesisConfig::from_env();
    if let Ok(endpoint) = std::env::var("KINESIS_ENDPOINT") {
        // A local server takes any credentials.
        config = config
            .with_endpoint(endpoint)
            .with_credentials("local", "local", None);
    }
    let db = connect(&database).await?;
    db.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {TABLE} (
            stream TEXT NOT NULL, shard TEXT NOT NULL, sequence TEXT NOT NULL,
            sub BIGINT NOT NULL, partition_key TEXT NOT NULL, data BYTEA NOT NULL,
            PRIMARY KEY (stream, shard, sequence, sub))"
    ))
    .await?;
    if let Some(n) = demo {
        demo_records(&config, &stream, n).await?;
    }
    let owner = format!("kinesis_to_postgres-{}", std::process::id());
    let checkpoints = PostgresCheckpoints::connect_with(
        &database,
        owner,
        Duration::from_secs(30),
        "kinesis_checkpoints",
    )
    .await?;
    let source = KinesisSource::new(&config, &stream, ReadSettings::default())?;
    let worker = KinesisWorker::new(
        source,
        Sink(database.clone(), stream.clone()),
        checkpoints,
        WorkerConfig::default().with_processor(
            ProcessorConfig::default().with_schedule(
                Schedule::default()
                    .with_flush_interval(Duration::from_secs(1))
                    .with_checkpoint_interval(Duration::from_secs(5)),
            ),
        ),
    );
    let stop = async {
        match demo {
            Some(n) => loop {
                let rows: i64 = db
                    .query_one(
                        &format!("SELECT count(*) FROM {TABLE} WHERE stream = $1"),
                        &[&stream],
                    )
                    .await
                    .map_or(0, |r| r.get(0));
                if rows as usize >= n {
                    println!("{rows} rows of {stream} in {TABLE}");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            },
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    let ends = worker.run(stop).await;
    for (shard, end) in ends {
        println!("{shard}: {end:?}");
    }
    let m = worker.source().metrics();
    println!(
        "user records read: {}, throttled calls: {}, expired iterators: {}, max MillisBehindLatest: {:?}",
        m.records(),
        m.throttled(),
        m.expired_iterators(),
        m.max_millis_behind_latest()
    );
    Ok(())
}
