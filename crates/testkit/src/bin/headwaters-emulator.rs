//! Run an emulator standalone: `headwaters-emulator pulsar --listen 127.0.0.1:8080 [--token T]`,
//! `headwaters-emulator eventstore --listen 127.0.0.1:1113 [--user NAME:PASSWORD[:GROUPS]]`,
//! or a simulated three-node EventStore cluster on free ports:
//! `headwaters-emulator eventstore-cluster [--gossip v20|v5]`. `--help` on each says more.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// In-process emulators of Apache Pulsar's WebSocket API and EventStoreDB's TCP API, for
/// tests and local development. Each prints one line with its address when it is ready
/// and runs until interrupted.
#[derive(Debug, Parser)]
#[command(name = "headwaters-emulator", version)]
struct Cli {
    #[command(subcommand)]
    emulator: Emulator,
}

#[derive(Debug, Subcommand)]
enum Emulator {
    /// A Pulsar WebSocket API v2 server (producers, consumers, readers).
    Pulsar {
        /// Where to listen (the real server's web service port is 8080).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Require this bearer token (header or `token` query parameter).
        #[arg(long)]
        token: Option<String>,
    },
    /// An EventStoreDB node speaking the legacy TCP protocol. Users `admin` (in `$admins`)
    /// and `ops` (in `$ops`), both with password `changeit`, always exist.
    Eventstore {
        /// Where to listen (the real server's external TCP port is 1113).
        #[arg(long, default_value = "127.0.0.1:1113")]
        listen: SocketAddr,
        /// Another user, as NAME:PASSWORD or NAME:PASSWORD:GROUP[,GROUP...] (e.g.
        /// `auditor:s3cret:readers`, or `root:pw:$admins` for another admin); repeatable.
        #[arg(long = "user", value_name = "NAME:PASSWORD[:GROUPS]", value_parser = parse_user)]
        users: Vec<headwaters_testkit::eventstore::User>,
    },
    /// A simulated three-node EventStoreDB cluster with HTTP gossip, on free ports; node 0
    /// is the leader. Prints the gossip seeds.
    EventstoreCluster {
        /// The gossip document's shape: v20 (Leader/Follower) or v5 (Master/Slave).
        #[arg(long, value_enum, default_value_t = Gossip::V20)]
        gossip: Gossip,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Gossip {
    V20,
    V5,
}

/// Why a `--user` value is refused.
#[derive(Debug, thiserror::Error)]
enum UserSpecError {
    #[error("expected NAME:PASSWORD[:GROUPS]")]
    Shape,
    #[error("the name and the password must not be empty")]
    Empty,
}

/// `NAME:PASSWORD[:GROUP,...]`.
fn parse_user(spec: &str) -> Result<headwaters_testkit::eventstore::User, UserSpecError> {
    let mut parts = spec.splitn(3, ':');
    let (Some(name), Some(password)) = (parts.next(), parts.next()) else {
        return Err(UserSpecError::Shape);
    };
    if name.is_empty() || password.is_empty() {
        return Err(UserSpecError::Empty);
    }
    let groups = parts
        .next()
        .map(|g| g.split(',').filter(|g| !g.is_empty()).collect::<Vec<_>>())
        .unwrap_or_default();
    Ok(headwaters_testkit::eventstore::User::new(
        name, password, groups,
    ))
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    match run(Cli::parse().emulator).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("headwaters-emulator: {e}");
            ExitCode::from(1)
        }
    }
}

/// Why an emulator could not start.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the cluster: {0}")]
    Cluster(#[source] std::io::Error),
}

async fn run(emulator: Emulator) -> Result<(), RunError> {
    match emulator {
        Emulator::Pulsar { listen, token } => {
            use headwaters_testkit::pulsar::{EmulatorConfig, PulsarEmulator};
            let mut config = EmulatorConfig::default();
            if let Some(t) = token {
                config = config.with_token(t);
            }
            let emulator = PulsarEmulator::start_with(config, listen)
                .await
                .map_err(|source| RunError::Listen {
                    addr: listen,
                    source,
                })?;
            // Scripts wait for this line.
            println!("pulsar emulator listening on {}", emulator.url());
            tokio::select! {
                () = emulator.serve_forever() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            Ok(())
        }
        Emulator::Eventstore { listen, users } => {
            use headwaters_testkit::eventstore::{EventStoreConfig, EventStoreEmulator};
            let config = users
                .into_iter()
                .fold(EventStoreConfig::default(), EventStoreConfig::with_account);
            let emulator = EventStoreEmulator::start_with(config, listen)
                .await
                .map_err(|source| RunError::Listen {
                    addr: listen,
                    source,
                })?;
            // Scripts wait for this line.
            println!("eventstore emulator listening on tcp://{}", emulator.addr());
            tokio::select! {
                () = emulator.serve_forever() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            Ok(())
        }
        Emulator::EventstoreCluster { gossip } => {
            use headwaters_testkit::eventstore::{
                EventStoreCluster, EventStoreConfig, GossipFormat,
            };
            let format = match gossip {
                Gossip::V20 => GossipFormat::V20,
                Gossip::V5 => GossipFormat::V5,
            };
            let cluster = EventStoreCluster::start(EventStoreConfig::default(), format)
                .await
                .map_err(RunError::Cluster)?;
            let seeds: Vec<String> = (0..3)
                .map(|i| format!("http://{}", cluster.gossip_addr(i)))
                .collect();
            // Scripts wait for this line (the seeds are its last word).
            println!(
                "eventstore cluster (leader: node 0) gossip seeds {}",
                seeds.join(",")
            );
            for (i, seed) in seeds.iter().enumerate() {
                eprintln!("node {i}: tcp://{} gossip {seed}", cluster.node(i).addr());
            }
            tokio::select! {
                () = cluster.node(0).serve_forever() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            Ok(())
        }
    }
}
